/*
 * daytime_fmt.c - the RFC 867 text: "Saturday, November 21, 2026 19:35:12-UTC\r\n".
 *
 * Portable (no libc, no snprintf) so the host harness can test it against
 * Python's calendar. The date comes from Howard Hinnant's civil_from_days,
 * exact for every day of the proleptic Gregorian calendar from 1970 on.
 */
#include "net_internal.h"

static const char *const weekdays[7] = {
	"Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
};
static const char *const months[12] = {
	"January", "February", "March", "April", "May", "June",
	"July", "August", "September", "October", "November", "December",
};

struct out {
	char *buf;
	size_t size, len;
};

static void put_char(struct out *o, char ch)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = ch;
	o->len++;
}

static void put_str(struct out *o, const char *s)
{
	while (*s)
		put_char(o, *s++);
}

/* Unsigned decimal, at least `width` digits (zero-padded). */
static void put_uint(struct out *o, uint64_t v, unsigned width)
{
	char tmp[20];
	unsigned n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v && n < sizeof(tmp));
	while (n < width && n < sizeof(tmp))
		tmp[n++] = '0';
	while (n)
		put_char(o, tmp[--n]);
}

size_t net_format_daytime(char *buf, size_t size, uint64_t unix_seconds)
{
	struct out o = {buf, size, 0};
	uint64_t days = unix_seconds / 86400;
	uint64_t secs = unix_seconds % 86400;

	/* civil_from_days, for days >= 0 (so era >= 0) */
	uint64_t z = days + 719468;
	uint64_t era = z / 146097;
	uint64_t doe = z - era * 146097;                                    /* [0, 146096] */
	uint64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; /* [0, 399] */
	uint64_t y = yoe + era * 400;
	uint64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);             /* [0, 365] */
	uint64_t mp = (5 * doy + 2) / 153;                                  /* [0, 11], March = 0 */
	uint64_t d = doy - (153 * mp + 2) / 5 + 1;                          /* [1, 31] */
	uint64_t m = mp < 10 ? mp + 3 : mp - 9;                             /* [1, 12] */
	if (m <= 2)
		y++;

	put_str(&o, weekdays[(days + 4) % 7]);   /* 1970-01-01 was a Thursday */
	put_str(&o, ", ");
	put_str(&o, months[m - 1]);
	put_char(&o, ' ');
	put_uint(&o, d, 1);
	put_str(&o, ", ");
	put_uint(&o, y, 4);
	put_char(&o, ' ');
	put_uint(&o, secs / 3600, 2);
	put_char(&o, ':');
	put_uint(&o, secs / 60 % 60, 2);
	put_char(&o, ':');
	put_uint(&o, secs % 60, 2);
	put_str(&o, "-UTC\r\n");
	if (size)
		buf[o.len < size ? o.len : size - 1] = '\0';
	return o.len;
}
