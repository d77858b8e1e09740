/* copy.c - a writer's staging copy and the identical-content check: both cost the data that
 * differs, not the file's size. Holes stay holes (SEEK_DATA/SEEK_HOLE), a filesystem that can
 * clone shares extents (FICLONE, copy_file_range), and the comparison skips what is a hole in
 * both files or the same blocks in both. */
#define _GNU_SOURCE
#include "copy.h"
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define MIN_OFF(a, b) ((a) < (b) ? (a) : (b))

/* Copy [off, off + len) of src to the same offsets of dst: copy_file_range (which shares the
 * extents where the filesystem can: xfs, btrfs), else read/write. */
static int copy_range(int srcfd, int dstfd, off_t off, off_t len)
{
	loff_t in = off, out = off, end = off + len;
	char buf[1 << 16];

	while (in < end) {
		ssize_t n = copy_file_range(srcfd, &in, dstfd, &out, (size_t)(end - in), 0);
		if (n > 0)
			continue;
		if (n == 0)
			return 0; /* source shorter than expected */
		if (errno != EXDEV && errno != ENOSYS && errno != EINVAL && errno != EOPNOTSUPP)
			return -errno;
		/* fall back to read/write */
		while (in < end) {
			ssize_t r =
			    pread(srcfd, buf, (size_t)MIN_OFF(end - in, (off_t)sizeof(buf)), in);
			if (r < 0)
				return -errno;
			if (r == 0)
				return 0;
			for (ssize_t done = 0; done < r;) {
				ssize_t w = pwrite(dstfd, buf + done, (size_t)(r - done), out);
				if (w < 0)
					return -errno;
				done += w;
				out += w;
			}
			in += r;
		}
	}
	return 0;
}

/* The next offset >= off (and < end) where fd may hold data; end if only a hole is left.
 * A filesystem that cannot tell (EINVAL) has data everywhere. */
static off_t next_data(int fd, off_t off, off_t end)
{
	off_t d = lseek(fd, off, SEEK_DATA);

	if (d < 0)
		return errno == ENXIO ? end : off;
	return d < end ? d : end;
}

static off_t next_hole(int fd, off_t off, off_t end)
{
	off_t h = lseek(fd, off, SEEK_HOLE);

	return h < 0 || h > end ? end : h;
}

/* Fill the new, empty dst with the first len bytes of src. A sparse file stays sparse: only
 * its data ranges (SEEK_DATA/SEEK_HOLE) are copied, and the size is set at the end, so a 4 KiB
 * write into a 1 GiB file with 8 KiB of data costs 12 KiB, not 1 GiB. Where the filesystem
 * can clone (FICLONE: xfs with reflink, btrfs), dst shares all of src's extents and a write
 * into it copies only the blocks it touches. */
int store_copy(int srcfd, int dstfd, off_t len)
{
	struct stat st;
	int err;

	if (fstat(srcfd, &st) < 0)
		return -errno;
	if (len > st.st_size)
		len = st.st_size;
	if (len <= 0)
		return 0;
	if (ioctl(dstfd, FICLONE, srcfd) == 0)
		return len < st.st_size && ftruncate(dstfd, len) < 0 ? -errno : 0;
	for (off_t pos = 0; (pos = next_data(srcfd, pos, len)) < len;) {
		off_t hole = next_hole(srcfd, pos, len);
		if (hole <= pos)
			hole = len; /* cannot tell: copy the rest */
		err = copy_range(srcfd, dstfd, pos, hole - pos);
		if (err)
			return err;
		pos = hole;
	}
	return ftruncate(dstfd, len) < 0 ? -errno : 0; /* a hole at the end has no data range */
}

/* Same bytes in the first size bytes of a and b? Ranges that are a hole in both are equal
 * without being read, so comparing two sparse files costs their data, not their size. */
/* The physical address of fd's data at off and where its extent ends: 1; 0 if off is in no
 * extent whose address says what it holds (delayed allocation, unwritten, inline, encoded
 * ...); -1 if the filesystem cannot tell (no FIEMAP). sync: write the file's dirty pages
 * first, so that the mapping is what the bytes are. */
static int extent_at(int fd, off_t off, bool sync, uint64_t *phys, off_t *end)
{
	const uint32_t unusable = FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC |
				  FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DATA_ENCRYPTED |
				  FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_DATA_INLINE |
				  FIEMAP_EXTENT_DATA_TAIL | FIEMAP_EXTENT_UNWRITTEN;
	struct {
		struct fiemap fm;
		struct fiemap_extent fe[1];
	} m;
	const struct fiemap_extent *e = &m.fm.fm_extents[0];

	memset(&m, 0, sizeof(m));
	m.fm.fm_start = (uint64_t)off;
	m.fm.fm_length = FIEMAP_MAX_OFFSET - (uint64_t)off;
	m.fm.fm_flags = sync ? FIEMAP_FLAG_SYNC : 0;
	m.fm.fm_extent_count = 1;
	if (ioctl(fd, FS_IOC_FIEMAP, &m.fm) < 0)
		return -1;
	if (m.fm.fm_mapped_extents != 1 || (e->fe_flags & unusable) ||
	    e->fe_logical > (uint64_t)off || !e->fe_physical)
		return 0;
	*phys = e->fe_physical + ((uint64_t)off - e->fe_logical);
	*end = (off_t)(e->fe_logical + e->fe_length);
	return 1;
}

/* Same bytes in the first size bytes of a and b (a published version and a writer's copy,
 * neither of which changes meanwhile)? Ranges that are a hole in both are equal without being
 * read, and so are ranges that both map to the same blocks (a clone's untouched extents, on
 * XFS or btrfs): comparing costs the data that differs in where it lies, not the size. */
int store_same_content(int a, int b, off_t size)
{
	static const size_t bs = 1 << 18;
	char *x = malloc(bs), *y = malloc(bs);
	bool probe = true, sync = true; /* FIEMAP works here; the first one syncs */
	off_t next_probe = 0;
	int same = 1;

	if (!x || !y) {
		same = 0;
		goto out;
	}
	for (off_t off = 0; same && off < size;) {
		off_t da = next_data(a, off, size), db = next_data(b, off, size);
		off_t end, hb;

		off = da < db ? da : db; /* before it, both read as zeros */
		if (off >= size)
			break;
		end = next_hole(a, off, size);
		hb = next_hole(b, off, size);
		if (hb > end)
			end = hb;
		if (end <= off)
			end = size;
		while (same && off < end) {
			if (probe && off >= next_probe) {
				uint64_t pa = 0, pb = 0;
				off_t ea = 0, eb = 0;
				int ka = extent_at(a, off, sync, &pa, &ea);
				int kb = extent_at(b, off, sync, &pb, &eb);
				sync = false;
				if (ka < 0 || kb < 0) {
					probe = false;
				} else if (ka && kb && pa == pb) {
					off = MIN_OFF(MIN_OFF(ea, eb), end); /* the same blocks */
					continue;
				} else {
					next_probe = ka && kb ? MIN_OFF(ea, eb) : off + (off_t)bs;
				}
			}
			size_t want = (size_t)MIN_OFF(end - off, (off_t)bs);
			ssize_t ra = pread(a, x, want, off), rb = pread(b, y, want, off);
			if (ra <= 0 || ra != rb || memcmp(x, y, (size_t)ra) != 0)
				same = 0;
			else
				off += ra;
		}
	}
out:
	free(x);
	free(y);
	return same;
}
