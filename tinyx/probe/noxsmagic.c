/* Guest side of tinyx/probe_boot.py: find the NoXS ivshmem device (1af4:1110) in sysfs,
 * enable it (memory decoding: no firmware did), mmap BAR2 through
 * /sys/bus/pci/devices/<bdf>/resource2 and print the first 32-bit word (the NoXS magic,
 * 0x53584f4e, "NOXS"). Static, no dependencies: gcc -static -Os -o noxsmagic noxsmagic.c */
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PCI "/sys/bus/pci/devices"

static unsigned long read_hex(const char *dev, const char *file)
{
	char path[256];
	unsigned long v = 0;
	snprintf(path, sizeof path, PCI "/%s/%s", dev, file);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	if (fscanf(f, "%lx", &v) != 1)
		v = 0;
	fclose(f);
	return v;
}

int main(void)
{
	DIR *d = opendir(PCI);
	struct dirent *e;
	if (!d) {
		printf("NOXS-PROBE no " PCI "\n");
		return 1;
	}
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		if (read_hex(e->d_name, "vendor") != 0x1af4 || read_hex(e->d_name, "device") != 0x1110)
			continue;
		char path[256];
		snprintf(path, sizeof path, PCI "/%s/enable", e->d_name);
		int fd = open(path, O_WRONLY);
		if (fd < 0 || write(fd, "1", 1) != 1)
			printf("NOXS-PROBE %s: cannot enable\n", e->d_name);
		if (fd >= 0)
			close(fd);
		snprintf(path, sizeof path, PCI "/%s/resource2", e->d_name);
		fd = open(path, O_RDWR | O_SYNC);
		if (fd < 0) {
			printf("NOXS-PROBE %s: no resource2\n", e->d_name);
			return 1;
		}
		volatile uint32_t *p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
		if (p == MAP_FAILED) {
			printf("NOXS-PROBE %s: mmap resource2 failed\n", e->d_name);
			return 1;
		}
		uint32_t magic = p[0];
		printf("NOXS-PROBE %s magic=0x%08x %s\n", e->d_name, magic, magic == 0x53584f4e ? "ok" : "bad");
		return magic == 0x53584f4e ? 0 : 1;
	}
	printf("NOXS-PROBE no 1af4:1110 device\n");
	return 1;
}
