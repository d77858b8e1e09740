/* binvfsctl - placeholder until the commands land. */
#include <stdio.h>
int main(void)
{
	fprintf(stderr, "binvfsctl: not built yet\n");
	return 1;
}
