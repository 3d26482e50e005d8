/*
 * app.c - start the application and tell when it serves.
 *
 * Start: fork, then in the child a new session (so the stop path can signal
 * the app's whole process group), stdin from /dev/null (the console's input
 * belongs to the init: the console bell), stdout and stderr inherited (the
 * console), the signal mask cleared, chdir, execve. A close-on-exec pipe tells
 * the parent whether the exec happened: EOF means it did, else the child sends
 * the step and errno that failed. So "started" is a fact, not a guess, and
 * port=0 can say READY at once.
 *
 * Serving: a non-blocking connect to 127.0.0.1:port that completes. The
 * connection is closed at once; a server that accepts only one client ever
 * (busybox nc -l without -k) is used up by it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lvinit.h"

struct exec_failure {
	int step;      /* 0 stdin, 1 chdir, 2 execve */
	int err;
};

static __attribute__((noreturn)) void child(const struct lv_app *app, char **envp, int report)
{
	struct exec_failure f = { 0, 0 };
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	setsid();
	int in = open("/dev/null", O_RDONLY);
	if (in < 0 || dup2(in, 0) < 0) {
		f.err = errno;
		goto fail;
	}
	if (in > 2)
		close(in);
	f.step = 1;
	if (chdir(app->cwd ? app->cwd : "/") != 0) {
		f.err = errno;
		goto fail;
	}
	f.step = 2;
	execve(app->argv[0], app->argv, envp);
	f.err = errno;
fail:
	(void)lv_write_all(report, &f, sizeof(f));
	_exit(127);
}

int lv_app_start(const struct lv_app *app, char *err, size_t errlen)
{
	static char *envp[LV_CONF_MAX_ENV + LV_ENV_DEFAULTS + 1];
	int p[2];
	lv_conf_envp(app, envp);
	if (pipe2(p, O_CLOEXEC) != 0) {
		snprintf(err, errlen, "app: pipe: %s", strerror(errno));
		return -1;
	}
	pid_t pid = fork();
	if (pid < 0) {
		snprintf(err, errlen, "app: fork: %s", strerror(errno));
		close(p[0]);
		close(p[1]);
		return -1;
	}
	if (pid == 0)
		child(app, envp, p[1]);
	close(p[1]);
	struct exec_failure f;
	ssize_t n;
	do
		n = read(p[0], &f, sizeof(f));
	while (n < 0 && errno == EINTR);
	close(p[0]);
	if (n == 0)
		return pid;   /* EOF: the exec closed the pipe */
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (n != (ssize_t)sizeof(f)) {
		snprintf(err, errlen, "app: %s did not start (no report from the child)", app->argv[0]);
		return -1;
	}
	static const char *const steps[] = { "cannot open /dev/null", "cannot chdir to", "cannot exec" };
	const char *what = steps[f.step >= 0 && f.step < 3 ? f.step : 2];
	const char *arg = f.step == 1 ? (app->cwd ? app->cwd : "/") : f.step == 2 ? app->argv[0] : "";
	snprintf(err, errlen, "app: %s %s: %s", what, arg, strerror(f.err));
	return -1;
}

int lv_app_accepts(unsigned port, unsigned timeout_ms)
{
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	int ok = 0;
	if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0) {
		ok = 1;
	} else if (errno == EINPROGRESS) {
		struct pollfd pfd = { fd, POLLOUT, 0 };
		int e = 0;
		socklen_t len = sizeof(e);
		if (poll(&pfd, 1, (int)timeout_ms) == 1 &&
		    getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) == 0 && e == 0)
			ok = 1;
	}
	close(fd);
	return ok;
}

int lv_app_rehearse(unsigned port, const char *send, const char *expect, unsigned timeout_ms)
{
	struct sockaddr_in sin;
	struct timeval tv = { (time_t)(timeout_ms / 1000u), (suseconds_t)(timeout_ms % 1000u) * 1000 };
	char got[512];
	size_t have = 0, len = strlen(send);
	int ok = 0;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0 ||
	    connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 || lv_write_all(fd, send, len) != 0)
		goto out;
	while (!ok && have < sizeof(got) - 1) {
		ssize_t n = read(fd, got + have, sizeof(got) - 1 - have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;   /* EOF, or the timeout (EAGAIN) */
		have += (size_t)n;
		got[have] = '\0';
		ok = memmem(got, have, expect, strlen(expect)) != NULL;
	}
out:
	close(fd);
	return ok;
}

void lv_app_describe(int status, char *out, size_t outlen)
{
	if (WIFEXITED(status))
		snprintf(out, outlen, "exited with status %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(out, outlen, "killed by signal %d", WTERMSIG(status));
	else
		snprintf(out, outlen, "ended (wait status 0x%x)", (unsigned)status);
}
