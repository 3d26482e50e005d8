/*
 * util.c - console lines, whole-file reads and time, on bare syscalls: stdio's
 * FILE machinery is left out of the binary (only vsnprintf is linked, which the
 * shared validator needs anyway), and every console line is one write(2).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lvinit.h"

int lv_write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static void vout(int fd, const char *prefix, const char *fmt, va_list ap)
{
	char buf[512];
	size_t n = strlen(prefix);
	memcpy(buf, prefix, n);
	int m = vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
	if (m > 0)
		n += (size_t)m < sizeof(buf) - n - 1 ? (size_t)m : sizeof(buf) - n - 2;
	buf[n++] = '\n';
	(void)lv_write_all(fd, buf, n);
}

/* One "lvinit: ..." line on stderr (the console, when we are PID 1). */
void lv_say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vout(2, "lvinit: ", fmt, ap);
	va_end(ap);
}

/* One line, no prefix (the command-line modes' key=value output). */
void lv_out(int fd, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vout(fd, "", fmt, ap);
	va_end(ap);
}

long lv_read_file(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t got = 0;
	for (;;) {
		/* one byte more than cap: tells "exactly cap" from "too big" */
		ssize_t n = read(fd, buf + got, cap + 1 - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;
			close(fd);
			errno = e;
			return -1;
		}
		if (n == 0)
			break;
		got += (size_t)n;
		if (got > cap) {
			close(fd);
			return -2;
		}
	}
	close(fd);
	buf[got] = '\0';
	return (long)got;
}

uint64_t lv_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t lv_now_ms(void)
{
	return lv_now_ns() / 1000000u;
}

void lv_sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000u, (long)(ms % 1000u) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}
