/*
 * cli.c - lvinit when it is not PID 1: the host-side checks of the code the
 * guest runs, for the unit tests and for whoever builds an image by hand.
 *
 *   lvinit --check-conf FILE   parse FILE as /etc/tinyx/app.conf; print what
 *                              the init would run (key=value lines)
 *   lvinit --dump-page FILE    read a NoXS region file as the guest reads its
 *                              BAR (same seqlock and validation); print the
 *                              hostname and network configuration it would apply
 *
 * Exit status: 0 valid, 1 invalid (one "lvinit: ..." line on stderr), 2 usage
 * or I/O error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lvinit.h"

static int usage(void)
{
	lv_say("usage: lvinit --check-conf FILE | --dump-page FILE (as PID 1: the init)");
	return 2;
}

static void printable(const char *s, size_t max, char *out)
{
	size_t i;
	for (i = 0; i < max && s[i]; i++)
		out[i] = s[i] >= ' ' && s[i] <= '~' ? s[i] : '?';
	out[i] = '\0';
}

/* KEY=VALUE with VALUE escaped as app.conf writes it (\r \n \t \\ \xHH). */
static void print_escaped(const char *key, const char *v)
{
	char out[3 * LV_CONF_MAX_LINE], *o = out;
	for (; *v && o < out + sizeof(out) - 5; v++) {
		unsigned char c = (unsigned char)*v;
		const char *named = c == '\r' ? "\\r" : c == '\n' ? "\\n" : c == '\t' ? "\\t" : c == '\\' ? "\\\\" : NULL;
		if (named)
			o += sprintf(o, "%s", named);
		else if (c < ' ' || c > '~')
			o += sprintf(o, "\\x%02x", c);
		else
			*o++ = (char)c;
	}
	*o = '\0';
	lv_out(1, "%s%s", key, out);
}

static int check_conf(const char *path)
{
	static char text[LV_CONF_MAX_BYTES + 1];
	static struct lv_app app;
	static char *envp[LV_CONF_MAX_ENV + LV_ENV_DEFAULTS + 1];
	char err[200];
	long n = lv_read_file(path, text, LV_CONF_MAX_BYTES);
	if (n == -1) {
		lv_say("cannot read %s: %s", path, strerror(errno));
		return 2;
	}
	if (n == -2) {
		lv_say("app.conf: %s is larger than %u bytes", path, LV_CONF_MAX_BYTES);
		return 1;
	}
	if (lv_conf_parse(&app, text, (size_t)n, err, sizeof(err)) != 0) {
		lv_say("%s", err);
		return 1;
	}
	lv_out(1, "name=%s", app.name);
	lv_out(1, "port=%u", app.port);
	lv_out(1, "cwd=%s", app.cwd ? app.cwd : "/");
	lv_out(1, "stop_timeout_ms=%u", app.stop_timeout_ms);
	lv_out(1, "prestart=%u", app.prestart);
	if (app.probe_send) {
		print_escaped("probe_send=", app.probe_send);
		print_escaped("probe_expect=", app.probe_expect);
	}
	lv_out(1, "argc=%u", app.argc);
	for (unsigned i = 0; i < app.argc; i++)
		lv_out(1, "arg=%s", app.argv[i]);
	lv_conf_envp(&app, envp);
	for (char **e = envp; *e; e++)
		lv_out(1, "env=%s", *e);
	return 0;
}

static int dump_page(const char *path)
{
	static struct lv_page pg;
	char err[160], text[NOXS_NAME_LEN + 1], host[NOXS_NAME_LEN + 1];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0) {
		lv_say("cannot open %s: %s", path, strerror(errno));
		return 2;
	}
	uint64_t size = (uint64_t)st.st_size;
	if (size < NOXS_REGION_MIN) {
		close(fd);
		lv_say("noxs: the region is %llu bytes (want >= %u)", (unsigned long long)size,
		       NOXS_REGION_MIN);
		return 1;
	}
	if (size > NOXS_REGION_MAX)
		size = NOXS_REGION_MAX;
	void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (map == MAP_FAILED) {
		lv_say("mmap %s: %s", path, strerror(errno));
		return 2;
	}
	int rc = lv_page_read(map, size, &pg, 1000, err, sizeof(err));
	munmap(map, size);
	if (rc != 0) {
		lv_say("%s", err);
		return 1;
	}
	const struct noxs_device_page *s = &pg.snap;
	printable(s->name, NOXS_NAME_LEN, text);
	lv_out(1, "name=%s", text);
	lv_out(1, "hostname=%s", lv_page_hostname(&pg, host) == 0 ? host : "");
	lv_out(1, "features=0x%llx", (unsigned long long)s->features);
	lv_out(1, "wait_config=%d", !!(s->features & NOXS_FEAT_WAIT_CONFIG));
	lv_out(1, "console_bell=%d", !!(s->features & NOXS_FEAT_CONSOLE_BELL));
	lv_out(1, "generation=%llu", (unsigned long long)s->generation);
	lv_out(1, "host_time_ns=%llu", (unsigned long long)s->host_time_ns);
	lv_out(1, "tsc_hz=%llu", (unsigned long long)lv_page_tsc_hz(&pg));
	lv_out(1, "sysctl_offset=%u", pg.layout.sysctl_offset);
	lv_out(1, "vif_count=%u", pg.layout.n_vif);
	for (unsigned i = 0; i < pg.layout.n_vif; i++) {
		const struct lv_vif *v = &pg.vif[i];
		char mac[18], ip[16], gw[16], mask[16];
		uint8_t m[4];
		lv_prefix_mask(v->prefix, m);
		lv_format_mac(v->mac, mac);
		lv_format_ip(v->ip, ip);
		lv_format_ip(v->gateway, gw);
		lv_format_ip(m, mask);
		lv_out(1, "vif%u.id=%u", i, v->id);
		lv_out(1, "vif%u.mac=%s", i, mac);
		lv_out(1, "vif%u.ip=%s", i, ip);
		lv_out(1, "vif%u.prefix=%u", i, v->prefix);
		lv_out(1, "vif%u.netmask=%s", i, mask);
		lv_out(1, "vif%u.gateway=%s", i, gw);
		lv_out(1, "vif%u.mtu=%u", i, v->mtu);
	}
	lv_out(1, "vbd_count=%u", pg.layout.n_vbd);
	return 0;
}

int lv_cli(int argc, char **argv)
{
	if (argc != 3)
		return usage();
	if (strcmp(argv[1], "--check-conf") == 0)
		return check_conf(argv[2]);
	if (strcmp(argv[1], "--dump-page") == 0)
		return dump_page(argv[2]);
	return usage();
}
