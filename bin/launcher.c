/*
 * The `lightvm` command as installed: a launcher in front of the Python command.
 *
 * Why: an installed `lightvm create CONFIG` served by lightvmd cost ~1.2x `python3 -c pass`,
 * nearly all of it the interpreter's own start-up (docs/cli-startup.md, "The launcher").
 * When lightvmd runs, it keeps a warm Python (lightvm/cli/warm.py) listening on
 * STATE/cli.sock; this program hands it the command line, the environment, the umask, its
 * standard streams and its working directory, and the warm server forks a child that runs
 * the same Python code `lightvm-py` runs, already imported. The child writes to this
 * process's own streams; this process relays the signals it gets and exits as the child did.
 *
 * In every other case, and whenever anything goes wrong before it commits to the server's
 * child, this program execs `lightvm-py` (the Python command, installed next to it) with the
 * same arguments: no daemon, no warm server, another user's or another installation's
 * server, a command the warm server does not take (help, usage errors, anything but the thin
 * path's VM commands), LIGHTVM_NO_LAUNCHER set, a server slower than HANDSHAKE_SECONDS. The
 * child runs the command only after this program's commit byte, so a fallback never runs it
 * twice; after the commit this program never falls back.
 *
 * The wire is described in lightvm/cli/warm.py.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define MAGIC "lightvm-launch-1"
#define PYTHON_COMMAND "lightvm-py"
#define SOCKET_NAME "cli.sock"
#define HANDSHAKE_SECONDS 3
#define MAX_REQUEST (4u << 20)

extern char **environ;

static char python_command[PATH_MAX];
static int server = -1;

/* Run the Python command instead: what `lightvm` is without the warm server. */
static void fall_back(char **argv)
{
    if (server >= 0)
        close(server);
    argv[0] = python_command;
    execv(python_command, argv);
    fprintf(stderr, "lightvm: cannot run %s: %s (reinstall lightvm)\n", python_command, strerror(errno));
    exit(127);
}

/* The state dir the Python command would use: the last --state-dir, else $LIGHTVM_STATE_DIR,
 * else /run/lightvm (root), $XDG_RUNTIME_DIR/lightvm, /tmp/lightvm-UID (lightvm/statedir.py).
 * A wrong guess costs nothing but the fallback: the warm server's child finds its own. */
static int state_dir(int argc, char **argv, char *out, size_t size)
{
    const char *given = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--state-dir") == 0 && i + 1 < argc)
            given = argv[++i];
        else if (strncmp(argv[i], "--state-dir=", 12) == 0)
            given = argv[i] + 12;
    }
    if (!given || !*given)
        given = getenv("LIGHTVM_STATE_DIR");
    int n;
    if (given && *given)
        n = snprintf(out, size, "%s", given);
    else if (geteuid() == 0)
        n = snprintf(out, size, "/run/lightvm");
    else if (getenv("XDG_RUNTIME_DIR") && *getenv("XDG_RUNTIME_DIR"))
        n = snprintf(out, size, "%s/lightvm", getenv("XDG_RUNTIME_DIR"));
    else
        n = snprintf(out, size, "/tmp/lightvm-%u", (unsigned)geteuid());
    return n > 0 && (size_t)n < size ? 0 : -1;
}

/* The interpreter pip wrote into lightvm-py's first line ("#!/path/to/python"). */
static int interpreter(char *out, size_t size)
{
    int fd = open(python_command, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, out, size - 1);
    close(fd);
    if (n < 3 || out[0] != '#' || out[1] != '!')
        return -1;
    out[n] = '\0';
    char *end = strchr(out, '\n');
    if (!end)
        return -1;
    *end = '\0';
    memmove(out, out + 2, (size_t)(end - out) - 1);
    return 0;
}

struct buffer {
    char *data;
    size_t length, capacity;
};

/* Room for n more bytes; -1 past MAX_REQUEST or out of memory. */
static int reserve(struct buffer *b, size_t n)
{
    if (b->length + n > MAX_REQUEST)
        return -1;
    if (b->length + n > b->capacity) {
        size_t capacity = (b->length + n) * 2;
        char *data = realloc(b->data, capacity);
        if (!data)
            return -1;
        b->data = data;
        b->capacity = capacity;
    }
    return 0;
}

/* One field: the text and its NUL. */
static int append(struct buffer *b, const char *text)
{
    size_t n = strlen(text) + 1;
    if (reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->length, text, n);
    b->length += n;
    return 0;
}

/* The request: length, then the NUL-terminated fields (lightvm/cli/warm.py). */
static int build_request(struct buffer *b, int argc, char **argv, const char *python)
{
    char number[32];
    if (reserve(b, 4) < 0) /* the length, filled in below */
        return -1;
    b->length = 4;
    mode_t mask = umask(0);
    umask(mask);
    snprintf(number, sizeof number, "%o", (unsigned)mask);
    if (append(b, MAGIC) < 0 || append(b, python) < 0 || append(b, number) < 0)
        return -1;
    snprintf(number, sizeof number, "%d", argc - 1);
    if (append(b, number) < 0)
        return -1;
    for (int i = 1; i < argc; i++)
        if (append(b, argv[i]) < 0)
            return -1;
    for (char **e = environ; *e; e++)
        if (strchr(*e, '=') && append(b, *e) < 0)
            return -1;
    uint32_t length = (uint32_t)(b->length - 4);
    unsigned char *head = (unsigned char *)b->data;
    for (int i = 0; i < 4; i++)
        head[i] = (unsigned char)(length >> (8 * i));
    return 0;
}

/* Send the request with stdin, stdout, stderr and the working directory attached. */
static int send_request(int sock, const struct buffer *b)
{
    int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (cwd < 0)
        return -1;
    int fds[4] = {0, 1, 2, cwd};
    char control[CMSG_SPACE(sizeof fds)];
    memset(control, 0, sizeof control);
    struct iovec iov = {.iov_base = b->data, .iov_len = b->length};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof fds);
    ssize_t sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
    close(cwd);
    if (sent <= 0)
        return -1;
    for (size_t done = (size_t)sent; done < b->length;) {
        ssize_t n = send(sock, b->data + done, b->length - done, MSG_NOSIGNAL);
        if (n <= 0)
            return -1;
        done += (size_t)n;
    }
    return 0;
}

static void relay(int number)
{
    unsigned char byte = (unsigned char)number;
    int saved = errno;
    (void)send(server, &byte, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    errno = saved;
}

static ssize_t read_fully(int fd, unsigned char *out, size_t size)
{
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, out + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

int main(int argc, char **argv)
{
    ssize_t n = readlink("/proc/self/exe", python_command, sizeof python_command - sizeof PYTHON_COMMAND - 1);
    char *slash = n > 0 ? memrchr(python_command, '/', (size_t)n) : NULL;
    if (!slash) {
        fprintf(stderr, "lightvm: cannot find where this command is installed (/proc/self/exe)\n");
        return 127;
    }
    strcpy(slash + 1, PYTHON_COMMAND);

    const char *off = getenv("LIGHTVM_NO_LAUNCHER");
    char dir[PATH_MAX], python[PATH_MAX];
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if ((off && *off) || argc < 2 || state_dir(argc, argv, dir, sizeof dir) < 0 || interpreter(python, sizeof python) < 0)
        fall_back(argv);
    if ((size_t)snprintf(address.sun_path, sizeof address.sun_path, "%s/%s", dir, SOCKET_NAME) >= sizeof address.sun_path) {
        /* A deep state dir: name the socket through the folder's descriptor (as lightvm/lineio.py does). */
        int folder = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (folder < 0)
            fall_back(argv);
        snprintf(address.sun_path, sizeof address.sun_path, "/proc/self/fd/%d/%s", folder, SOCKET_NAME);
    }

    server = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval handshake = {.tv_sec = HANDSHAKE_SECONDS};
    if (server < 0 || setsockopt(server, SOL_SOCKET, SO_SNDTIMEO, &handshake, sizeof handshake) < 0 ||
        setsockopt(server, SOL_SOCKET, SO_RCVTIMEO, &handshake, sizeof handshake) < 0 ||
        connect(server, (struct sockaddr *)&address, sizeof address) < 0)
        fall_back(argv);

    struct buffer request = {0};
    unsigned char answer[2];
    /* 'R': the child is ready. The commit 'G' is what lets it run: a launcher that timed out
     * and fell back never sent it, so the server's child never runs the command too. */
    const unsigned char commit = 'G';
    if (build_request(&request, argc, argv, python) < 0 || send_request(server, &request) < 0 ||
        read_fully(server, answer, 1) != 1 || answer[0] != 'R' || send(server, &commit, 1, MSG_NOSIGNAL) != 1)
        fall_back(argv);
    free(request.data);

    /* Committed: from here on the command's end is the child's; never fall back. */
    struct timeval forever = {0};
    setsockopt(server, SOL_SOCKET, SO_RCVTIMEO, &forever, sizeof forever);
    struct sigaction action = {.sa_handler = relay};
    sigemptyset(&action.sa_mask);
    int relayed[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
    for (size_t i = 0; i < sizeof relayed / sizeof relayed[0]; i++)
        sigaction(relayed[i], &action, NULL);

    if (read_fully(server, answer, 2) != 2 || (answer[0] != 'E' && answer[0] != 'S')) {
        fprintf(stderr, "lightvm: the warm CLI server (lightvmd) ended before the command did; "
                        "see `lightvm daemon log`\n");
        return 1;
    }
    if (answer[0] == 'E')
        return answer[1];
    int number = answer[1];
    signal(number, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, number);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    raise(number);
    return 128 + number;
}
