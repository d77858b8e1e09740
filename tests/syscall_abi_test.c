/* syscall_abi_test - drives the pure decoder of src/syscall_abi.c for tests/test_abi.py.
 *
 * stdin, one case a line:  ABI INSN LINE
 *   ABI   a table (x86_64, i386, x32, generic64, ppc64, s390x), "native" (the build's own),
 *         or "x86" (told by INSN, as the daemon does on x86-64)
 *   INSN  the two bytes before the caller's pc in hex ("cd80", "0f05"), or "-" (unreadable)
 *   LINE  a line of /proc/<tid>/syscall
 * stdout, one answer a line:  ABI VERDICT [HOW]  (VERDICT: no, writes, how; "bad" if the line
 * does not parse). */
#include "syscall_abi.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
	char buf[512];

	while (fgets(buf, sizeof(buf), stdin)) {
		char abiname[32], insnhex[8];
		int off = 0;
		struct sysabi_call c;
		enum sysabi abi;
		unsigned char insn[2];
		uint64_t how = 0;

		if (sscanf(buf, "%31s %7s %n", abiname, insnhex, &off) != 2 || !off) {
			puts("bad");
			continue;
		}
		if (!sysabi_parse(buf + off, &c)) {
			puts("bad");
			continue;
		}
		if (!strcmp(abiname, "x86")) {
			bool have = strcmp(insnhex, "-") != 0;
			if (have) {
				unsigned long v = strtoul(insnhex, NULL, 16);
				insn[0] = (unsigned char)(v >> 8);
				insn[1] = (unsigned char)v;
			}
			abi = sysabi_x86_entry(&c, have ? insn : NULL);
		} else if (!strcmp(abiname, "native")) {
			abi = sysabi_native();
		} else {
			abi = sysabi_by_name(abiname);
		}
		switch (sysabi_decode(abi, &c, &how)) {
		case SYSABI_NO:
			printf("%s no\n", sysabi_name(abi));
			break;
		case SYSABI_WRITES:
			printf("%s writes\n", sysabi_name(abi));
			break;
		case SYSABI_HOW:
			printf("%s how 0x%" PRIx64 "\n", sysabi_name(abi), how);
			break;
		}
		fflush(stdout);
	}
	return 0;
}
