/* Starts one execution in a warm bubblewrap sandbox (bwrap_warm.py): the launcher (launcher.py)
 * posix_spawns it as root, which costs a vfork instead of Python's fork of itself with the uid
 * switch and a Python rlimit step in the child (about 2 ms of CPU per execution on the 2-core
 * machine). Compiled by the host when a C compiler is there; without it the launcher does the same
 * in Python.
 *
 * Usage: exec_as UID NICE STDIN [RESOURCE=SOFT:HARD...] -- COMMAND [ARG...]
 * (RESOURCE: CPU, FSIZE, NPROC, NOFILE, CORE or AS, as in RLIMIT_*; STDIN 1: stdin from
 * .sandbox-stdin in /work). In order: oom_score_adj 1000 (the memory cgroup's OOM killer picks the
 * code; after the uid switch its /proc files belong to root), the caller's niceness when it is
 * higher, the rlimits, an empty capability bounding set, no supplementary groups, the uid and gid,
 * /work, stdin; then it execs COMMAND through PATH. Any failure before the exec exits 126, a
 * command that cannot be run 127 (what a shell reports), with a message on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

static int fail(const char *what) {
    fprintf(stderr, "kpop-sandbox: %s: %s\n", what, strerror(errno));
    return 126;
}

static const struct { const char *name; int resource; } RESOURCES[] = {
    {"CPU", RLIMIT_CPU}, {"FSIZE", RLIMIT_FSIZE}, {"NPROC", RLIMIT_NPROC},
    {"NOFILE", RLIMIT_NOFILE}, {"CORE", RLIMIT_CORE}, {"AS", RLIMIT_AS},
};

/* "NAME=SOFT:HARD" -> setrlimit; -1 on a malformed or unknown one. */
static int limit(const char *spec) {
    const char *eq = strchr(spec, '='), *colon = eq ? strchr(eq, ':') : NULL;
    if (!colon) return -1;
    for (size_t i = 0; i < sizeof(RESOURCES) / sizeof(RESOURCES[0]); i++) {
        if (strlen(RESOURCES[i].name) == (size_t)(eq - spec) && strncmp(spec, RESOURCES[i].name, eq - spec) == 0) {
            struct rlimit r = {strtoull(eq + 1, NULL, 10), strtoull(colon + 1, NULL, 10)};
            return setrlimit(RESOURCES[i].resource, &r);
        }
    }
    errno = EINVAL;
    return -1;
}

int main(int argc, char **argv) {
    int command = 4;
    while (command < argc && strcmp(argv[command], "--") != 0) command++;
    if (command + 1 >= argc) {
        fprintf(stderr, "usage: exec_as UID NICE STDIN [RESOURCE=SOFT:HARD...] -- COMMAND...\n");
        return 126;
    }
    uid_t uid = (uid_t)strtoul(argv[1], NULL, 10);
    int nice_value = atoi(argv[2]);
    int fd = open("/proc/self/oom_score_adj", O_WRONLY);
    if (fd >= 0) {
        if (write(fd, "1000", 4) != 4) { /* not fatal: the OOM killer still picks by size */ }
        close(fd);
    }
    if (nice_value > getpriority(PRIO_PROCESS, 0) && setpriority(PRIO_PROCESS, 0, nice_value) != 0) return fail("nice");
    for (int i = 4; i < command; i++)
        if (limit(argv[i]) != 0) return fail(argv[i]);
    for (int cap = 0; prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0; cap++) {
    }
    if (errno != EINVAL) return fail("dropping the capability bounding set");
    if (setgroups(0, NULL) || setresgid(uid, uid, uid) || setresuid(uid, uid, uid)) return fail("uid switch");
    if (chdir("/work") != 0) return fail("/work");
    if (strcmp(argv[3], "1") == 0) {
        fd = open(".sandbox-stdin", O_RDONLY);
        if (fd < 0 || dup2(fd, 0) < 0) return fail(".sandbox-stdin");
        close(fd);
    }
    execvp(argv[command + 1], argv + command + 1);
    fprintf(stderr, "%s: %s\n", argv[command + 1], strerror(errno));
    return 127;
}
