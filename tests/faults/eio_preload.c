/* A failing SD card, switched on and off while the process runs (LD_PRELOAD).
 *
 *   LD_PRELOAD=eio.so EIO_PREFIX=/path/to/state EIO_SWITCH=/path/to/switch EIO_CALLS=write,sync,read
 *
 * While the file EIO_SWITCH exists, calls on file descriptors whose path starts with EIO_PREFIX
 * fail with EIO, as a dying card's do. EIO_CALLS picks which (default "write,sync"):
 *   write: write pwrite pwrite64    sync: fsync fdatasync    read: read pread pread64
 *   plainread: read alone, which SQLite never uses: the buffer reads fine through SQLite but
 *              not through a Python file object (to test what the store does besides SQLite)
 * That covers this node's disk I/O: SQLite 3.40 reaches its files only through pwrite64, pread64
 * and fdatasync (its own syscall table, resolved through the PLT, so preloading interposes it),
 * and Python's file objects and os.fsync through write, read and fsync. No one here uses
 * writev or pwritev on a file. The switch is a file, not a signal, so that a test can flip it
 * from outside without touching the process; while it is off a call costs one access(2) more.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

enum { WRITE = 1, SYNC = 2, READ = 4, PLAIN_READ = 8 };

static int has_token(const char *list, const char *token) /* "a,b,c" holds token exactly */
{
    size_t n = strlen(token);
    for (const char *p = list; (p = strstr(p, token)); p += n)
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return 1;
    return 0;
}

static int should_fail(int fd, int kind)
{
    static const char *prefix, *sw;
    static int kinds = -1;
    if (kinds < 0) { /* first call; a race here only repeats the same work */
        const char *calls = getenv("EIO_CALLS");
        if (!calls)
            calls = "write,sync";
        prefix = getenv("EIO_PREFIX");
        sw = getenv("EIO_SWITCH");
        kinds = (has_token(calls, "write") ? WRITE : 0) | (has_token(calls, "sync") ? SYNC : 0) |
                (has_token(calls, "read") ? READ : 0) | (has_token(calls, "plainread") ? PLAIN_READ : 0);
    }
    if (!(kinds & kind) || !prefix || !sw)
        return 0;
    int saved = errno; /* the real call, if it runs, must see errno as the caller left it */
    int fail = 0;
    if (access(sw, F_OK) == 0) {
        char link[32], path[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, path, sizeof path - 1);
        size_t len = strlen(prefix);
        fail = n >= (ssize_t)len && strncmp(path, prefix, len) == 0;
    }
    errno = saved;
    return fail;
}

#define REAL(name) static __typeof__(name) *real; if (!real) real = dlsym(RTLD_NEXT, #name)
#define FAIL_IF(fd, kind) if (should_fail(fd, kind)) { errno = EIO; return -1; }

ssize_t write(int fd, const void *buf, size_t n)
{
    REAL(write);
    FAIL_IF(fd, WRITE);
    return real(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    REAL(pwrite);
    FAIL_IF(fd, WRITE);
    return real(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
    REAL(pwrite64);
    FAIL_IF(fd, WRITE);
    return real(fd, buf, n, off);
}

int fsync(int fd)
{
    REAL(fsync);
    FAIL_IF(fd, SYNC);
    return real(fd);
}

int fdatasync(int fd)
{
    REAL(fdatasync);
    FAIL_IF(fd, SYNC);
    return real(fd);
}

ssize_t read(int fd, void *buf, size_t n)
{
    REAL(read);
    FAIL_IF(fd, READ | PLAIN_READ);
    return real(fd, buf, n);
}

ssize_t pread(int fd, void *buf, size_t n, off_t off)
{
    REAL(pread);
    FAIL_IF(fd, READ);
    return real(fd, buf, n, off);
}

ssize_t pread64(int fd, void *buf, size_t n, off64_t off)
{
    REAL(pread64);
    FAIL_IF(fd, READ);
    return real(fd, buf, n, off);
}
