/*
 * noxs-read - print a VM's NoXS configuration from inside a Linux guest.
 *
 *   noxs-read               find ivshmem 1af4:1110 in /sys/bus/pci/devices,
 *                           map its resource2 (BAR2)
 *   noxs-read --file PATH   read a region file directly (e.g. /dev/shm/...)
 *
 * The page is validated exactly as the unikernels do (lib/noxs_validate.c,
 * compiled into both): one consistent snapshot through the generation
 * seqlock, nothing outside the mapping ever read. Output is key=value lines.
 * Exit status: 0 ok, 1 invalid page, 2 no device / usage / I/O error.
 */
#define _DEFAULT_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "noxs_validate.h"

#define SEQ_TRIES 1000000

static int read_hex_file(const char *path, unsigned long *out)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	int ok = fscanf(f, "%lx", out) == 1;
	fclose(f);
	return ok ? 0 : -1;
}

/* Path of resource2 of the first ivshmem 1af4:1110 function, or -1. */
static int find_device(char *out, size_t outlen)
{
	const char *root = "/sys/bus/pci/devices";
	DIR *d = opendir(root);
	if (!d)
		return -1;
	struct dirent *e;
	int rc = -1;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		char p[512];
		unsigned long vendor, device;
		snprintf(p, sizeof(p), "%s/%s/vendor", root, e->d_name);
		if (read_hex_file(p, &vendor) != 0)
			continue;
		snprintf(p, sizeof(p), "%s/%s/device", root, e->d_name);
		if (read_hex_file(p, &device) != 0)
			continue;
		if (vendor == NOXS_PCI_VENDOR && device == NOXS_PCI_DEVICE) {
			/* No kernel driver binds ivshmem, so nobody has enabled its memory
			 * decoding: ask the PCI core to (best effort; needs root). */
			snprintf(p, sizeof(p), "%s/%s/enable", root, e->d_name);
			FILE *en = fopen(p, "w");
			if (en) {
				fputs("1", en);
				fclose(en);
			}
			snprintf(out, outlen, "%s/%s/resource%u", root, e->d_name, NOXS_PCI_BAR);
			rc = 0;
			break;
		}
	}
	closedir(d);
	return rc;
}

static void print_text(const char *key, const char *s, size_t max)
{
	printf("%s=", key);
	for (size_t i = 0; i < max && s[i]; i++)
		putchar(s[i] >= 32 && s[i] < 127 ? s[i] : '?');
	putchar('\n');
}

static const char *state_name(uint32_t s)
{
	static const char *const names[] = { "Unknown", "Initialising", "InitWait", "Initialised",
	                                     "Connected", "Closing", "Closed", "Reconfiguring",
	                                     "Reconfigured" };
	return s < sizeof(names) / sizeof(names[0]) ? names[s] : "invalid";
}

static const char *boot_name(uint32_t s)
{
	static const char *const names[] = { "UNKNOWN", "BOOTING", "DEVICES_UP", "READY",
	                                     "STOPPING", "HALTED", "ERROR" };
	return s < sizeof(names) / sizeof(names[0]) ? names[s] : "invalid";
}

int main(int argc, char **argv)
{
	char path[600];
	if (argc == 3 && strcmp(argv[1], "--file") == 0) {
		snprintf(path, sizeof(path), "%s", argv[2]);
	} else if (argc == 1) {
		if (find_device(path, sizeof(path)) != 0) {
			fprintf(stderr, "noxs-read: no NoXS device (ivshmem %04x:%04x) in /sys/bus/pci/devices\n",
			        NOXS_PCI_VENDOR, NOXS_PCI_DEVICE);
			return 2;
		}
	} else {
		fprintf(stderr, "usage: noxs-read [--file PATH]\n");
		return 2;
	}

	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0) {
		fprintf(stderr, "noxs-read: %s: %s\n", path, strerror(errno));
		return 2;
	}
	uint64_t size = (uint64_t)st.st_size;
	if (size < NOXS_REGION_MIN) {
		fprintf(stderr, "noxs-read: noxs: %s is %llu bytes (want >= %u)\n", path,
		        (unsigned long long)size, NOXS_REGION_MIN);
		return 1;
	}
	if (size > NOXS_REGION_MAX)
		size = NOXS_REGION_MAX;   /* never map or read more than a region can be */
	const volatile uint8_t *region = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	if (region == MAP_FAILED) {
		fprintf(stderr, "noxs-read: mmap %s: %s\n", path, strerror(errno));
		return 2;
	}

	/* One consistent snapshot: device page + host halves of control pages. */
	static struct noxs_device_page pg;
	static struct noxs_layout l;
	static struct noxs_sysctl_ctrl sys;
	static struct noxs_vif_ctrl vif[NOXS_MAX_DEVICES];
	static struct noxs_vbd_ctrl vbd[NOXS_MAX_DEVICES];
	char err[160];
	int rc = -1;
	const volatile uint64_t *gen =
		(const volatile uint64_t *)(region + offsetof(struct noxs_device_page, generation));
	for (int tries = 0;; tries++) {
		if (tries > SEQ_TRIES) {
			snprintf(err, sizeof(err), "noxs: page generation never settles (odd, or rewritten on every read)");
			rc = -1;
			break;
		}
		uint64_t g1 = *gen;
		if (g1 & 1)
			continue;
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		memcpy(&pg, (const void *)region, sizeof(pg));
		rc = noxs_validate_page(&pg, size, &l, err, sizeof(err));
		if (rc == 0)
			memcpy(&sys, (const void *)(region + l.sysctl_offset), sizeof(sys));
		for (uint32_t i = 0; rc == 0 && i < l.n_vif; i++) {
			memcpy(&vif[i], (const void *)(region + l.vif_offset[i]), sizeof(vif[i]));
			rc = noxs_validate_vif(&vif[i], l.vif_id[i], err, sizeof(err));
		}
		for (uint32_t i = 0; rc == 0 && i < l.n_vbd; i++) {
			memcpy(&vbd[i], (const void *)(region + l.vbd_offset[i]), sizeof(vbd[i]));
			rc = noxs_validate_vbd(&vbd[i], l.vbd_id[i], err, sizeof(err));
		}
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (*gen == g1)
			break;
	}
	if (rc != 0) {
		fprintf(stderr, "noxs-read: %s\n", err);
		return 1;
	}

	print_text("name", pg.name, NOXS_NAME_LEN);
	const uint8_t *u = pg.uuid;
	printf("uuid=%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x\n", u[0], u[1],
	       u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
	printf("abi_version=%u\n", (unsigned)pg.abi_version);
	printf("features=0x%llx\n", (unsigned long long)pg.features);
	printf("generation=%llu\n", (unsigned long long)pg.generation);
	printf("host_time_ns=%llu\n", (unsigned long long)pg.host_time_ns);
	printf("tsc_hz=%llu\n", (unsigned long long)pg.tsc_hz);
	printf("region_size=%u\n", (unsigned)pg.region_size);
	printf("dev_count=%u\n", (unsigned)pg.dev_count);
	printf("sysctl.be_state=%s\n", state_name(sys.hdr.be_state));
	printf("sysctl.fe_state=%s\n", state_name(sys.hdr.fe_state));
	printf("sysctl.status_req=0x%x\n", (unsigned)sys.status_req);
	printf("sysctl.status_ack=0x%x\n", (unsigned)sys.status_ack);
	printf("sysctl.boot_state=%s\n", boot_name(sys.boot.state));
	printf("vif_count=%u\n", (unsigned)l.n_vif);
	for (uint32_t i = 0; i < l.n_vif; i++) {
		const struct noxs_vif_ctrl *v = &vif[i];
		printf("vif%u.id=%u\n", i, (unsigned)l.vif_id[i]);
		printf("vif%u.mac=%02x:%02x:%02x:%02x:%02x:%02x\n", i, v->mac[0], v->mac[1], v->mac[2],
		       v->mac[3], v->mac[4], v->mac[5]);
		printf("vif%u.ip=%u.%u.%u.%u\n", i, v->ip[0], v->ip[1], v->ip[2], v->ip[3]);
		printf("vif%u.prefix=%u\n", i, (unsigned)v->prefix);
		printf("vif%u.gateway=%u.%u.%u.%u\n", i, v->gateway[0], v->gateway[1], v->gateway[2],
		       v->gateway[3]);
		printf("vif%u.mtu=%u\n", i, (unsigned)v->mtu);
		printf("vif%u.dev_mac=%02x:%02x:%02x:%02x:%02x:%02x\n", i, v->dev_mac[0], v->dev_mac[1],
		       v->dev_mac[2], v->dev_mac[3], v->dev_mac[4], v->dev_mac[5]);
		char key[32];
		snprintf(key, sizeof(key), "vif%u.bridge", i);
		print_text(key, v->bridge, NOXS_IFNAME_LEN);
	}
	printf("vbd_count=%u\n", (unsigned)l.n_vbd);
	for (uint32_t i = 0; i < l.n_vbd; i++) {
		const struct noxs_vbd_ctrl *v = &vbd[i];
		printf("vbd%u.id=%u\n", i, (unsigned)l.vbd_id[i]);
		printf("vbd%u.sectors=%llu\n", i, (unsigned long long)v->sectors);
		printf("vbd%u.sector_size=%u\n", i, (unsigned)v->sector_size);
		printf("vbd%u.mode=%s\n", i, v->mode == NOXS_VBD_RO ? "ro" : "rw");
	}
	return 0;
}
