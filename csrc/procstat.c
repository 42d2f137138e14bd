/* procstat.c — see procstat.h. */
#include "procstat.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* Reads a small file into buf (NUL-terminated). Returns bytes read or -errno. */
static int read_small(const char *path, char *buf, int cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int total = 0;
    while (total < cap - 1) {
        ssize_t got = read(fd, buf + total, (size_t)(cap - 1 - total));
        if (got < 0) {
            if (errno == EINTR)
                continue;
            int err = errno;
            close(fd);
            return -err;
        }
        if (got == 0)
            break;
        total += (int)got;
    }
    close(fd);
    buf[total] = '\0';
    return total;
}

static void task_path(char *out, size_t cap, pid_t tid, const char *leaf)
{
    if (tid == 0)
        snprintf(out, cap, "/proc/thread-self/%s", leaf);
    else
        snprintf(out, cap, "/proc/self/task/%d/%s", (int)tid, leaf);
}

static int parse_schedstat(const char *buf, uint64_t *cpu_ns, uint64_t *runq_ns)
{
    unsigned long long cpu = 0, runq = 0;
    if (sscanf(buf, "%llu %llu", &cpu, &runq) != 2)
        return -EIO;
    *cpu_ns = cpu;
    *runq_ns = runq;
    return 0;
}

int gla_read_schedstat(pid_t tid, uint64_t *cpu_ns, uint64_t *runq_ns)
{
    char path[64], buf[128];
    task_path(path, sizeof path, tid, "schedstat");
    int rc = read_small(path, buf, sizeof buf);
    if (rc < 0)
        return rc;
    return parse_schedstat(buf, cpu_ns, runq_ns);
}

int gla_read_schedstat_fd(int fd, uint64_t *cpu_ns, uint64_t *runq_ns)
{
    char buf[128];
    ssize_t got = pread(fd, buf, sizeof buf - 1, 0);
    if (got <= 0)
        return got < 0 ? -errno : -EIO;
    buf[got] = '\0';
    return parse_schedstat(buf, cpu_ns, runq_ns);
}

int gla_open_own_schedstat(void)
{
    int fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int gla_read_thread_start_ns(pid_t tid, uint64_t *start_mono_ns)
{
    char path[64], buf[1024];
    task_path(path, sizeof path, tid, "stat");
    int rc = read_small(path, buf, sizeof buf);
    if (rc < 0)
        return rc;
    /* Field 2 (comm) may hold spaces and parentheses: parse after the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p)
        return -EIO;
    p++;
    /* starttime is field 22; after ')' we are at field 3. */
    for (int field = 3; field < 22; field++) {
        p = strchr(p + 1, ' ');
        if (!p)
            return -EIO;
    }
    unsigned long long ticks = strtoull(p + 1, NULL, 10);
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0)
        return -EINVAL;
    struct timespec boot, mono;
    clock_gettime(CLOCK_BOOTTIME, &boot);
    clock_gettime(CLOCK_MONOTONIC, &mono);
    uint64_t boot_ns = (uint64_t)boot.tv_sec * 1000000000ull + (uint64_t)boot.tv_nsec;
    uint64_t mono_ns = (uint64_t)mono.tv_sec * 1000000000ull + (uint64_t)mono.tv_nsec;
    uint64_t start_boot_ns = ticks * (1000000000ull / (uint64_t)hz);
    uint64_t age_ns = boot_ns > start_boot_ns ? boot_ns - start_boot_ns : 0;
    *start_mono_ns = mono_ns > age_ns ? mono_ns - age_ns : 0;
    return 0;
}

int gla_read_thread_name(pid_t tid, char *buf, int cap)
{
    char path[64], tmp[64];
    task_path(path, sizeof path, tid, "comm");
    int rc = read_small(path, tmp, sizeof tmp);
    if (rc < 0)
        return rc;
    tmp[strcspn(tmp, "\n")] = '\0';
    snprintf(buf, (size_t)cap, "%s", tmp);
    return 0;
}

/* Path of this process's cgroup for a v1 controller (or v2 when controller is ""):
 * /sys/fs/cgroup[/<controller>]/<path from /proc/self/cgroup>. */
static int cgroup_dir(const char *controller, char *out, size_t cap)
{
    char buf[4096];
    int rc = read_small("/proc/self/cgroup", buf, sizeof buf);
    if (rc < 0)
        return rc;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c2 = '\0';
        const char *ctrls = c1 + 1;
        const char *path = c2 + 1;
        if (controller[0] == '\0') {
            if (ctrls[0] == '\0') {
                snprintf(out, cap, "/sys/fs/cgroup%s", path);
                return 0;
            }
            continue;
        }
        /* v1: comma-separated controller list. */
        char list[256];
        snprintf(list, sizeof list, ",%s,", ctrls);
        char want[64];
        snprintf(want, sizeof want, ",%s,", controller);
        if (strstr(list, want)) {
            snprintf(out, cap, "/sys/fs/cgroup/%s%s", controller, path);
            if (access(out, F_OK) != 0) /* a namespaced mount shows the group at root */
                snprintf(out, cap, "/sys/fs/cgroup/%s", controller);
            return 0;
        }
    }
    return -ENOENT;
}

static int read_in(const char *dir, const char *leaf, char *buf, int cap)
{
    char path[4096 + 64];
    snprintf(path, sizeof path, "%s/%s", dir, leaf);
    return read_small(path, buf, cap);
}

int gla_read_usable_cores(int *affinity, double *quota, double *usable)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0)
        return -errno;
    int ncpu = CPU_COUNT(&set);
    double quota_cores = 0.0;
    char dir[4096], buf[128];
    if (cgroup_dir("", dir, sizeof dir) == 0 && read_in(dir, "cpu.max", buf, sizeof buf) > 0) {
        long long q = -1, period = 0;
        if (strncmp(buf, "max", 3) != 0 && sscanf(buf, "%lld %lld", &q, &period) == 2 && q > 0 &&
            period > 0)
            quota_cores = (double)q / (double)period;
    } else if (cgroup_dir("cpu", dir, sizeof dir) == 0) {
        char pbuf[64];
        if (read_in(dir, "cpu.cfs_quota_us", buf, sizeof buf) > 0 &&
            read_in(dir, "cpu.cfs_period_us", pbuf, sizeof pbuf) > 0) {
            long long q = atoll(buf), period = atoll(pbuf);
            if (q > 0 && period > 0)
                quota_cores = (double)q / (double)period;
        }
    }
    *affinity = ncpu;
    *quota = quota_cores;
    *usable = (quota_cores > 0.0 && quota_cores < (double)ncpu) ? quota_cores : (double)ncpu;
    return 0;
}

/* A number from a cgroup or /proc file: 1 with *v set, 0 for "max"/unreadable. */
static int read_u64(const char *dir, const char *leaf, uint64_t *v)
{
    char buf[64];
    if (read_in(dir, leaf, buf, sizeof buf) <= 0 || strncmp(buf, "max", 3) == 0)
        return 0;
    char *end;
    unsigned long long x = strtoull(buf, &end, 10);
    if (end == buf)
        return 0;
    *v = x;
    return 1;
}

/* The value of `name` in a flat-keyed file (memory.stat), 0 when absent. */
static uint64_t stat_field(const char *dir, const char *leaf, const char *name)
{
    char buf[8192];
    if (read_in(dir, leaf, buf, sizeof buf) <= 0)
        return 0;
    size_t len = strlen(name);
    for (char *line = buf; line && *line;
         line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, name, len) == 0 && line[len] == ' ')
            return strtoull(line + len + 1, NULL, 10);
    }
    return 0;
}

int gla_read_memory_groups(gla_mem_group *out, int cap)
{
    char dir[GLA_MEM_PATH_LEN], base[64];
    int v2 = 1;
    if (cgroup_dir("", dir, sizeof dir) == 0) {
        char ctrls[512];
        v2 = read_small("/sys/fs/cgroup/cgroup.controllers", ctrls, sizeof ctrls) > 0 &&
             strstr(ctrls, "memory") != NULL;
    } else {
        v2 = 0;
    }
    if (v2) {
        snprintf(base, sizeof base, "/sys/fs/cgroup");
    } else {
        if (cgroup_dir("memory", dir, sizeof dir) != 0)
            return 0; /* no memory cgroup: no limit from one */
        snprintf(base, sizeof base, "/sys/fs/cgroup/memory");
    }
    size_t base_len = strlen(base);
    int n = 0;
    for (;;) {
        uint64_t limit = 0, usage = 0;
        int limited = v2 ? read_u64(dir, "memory.max", &limit)
                         : read_u64(dir, "memory.limit_in_bytes", &limit) && limit < (1ull << 62);
        if (limited && limit > 0 &&
            read_u64(dir, v2 ? "memory.current" : "memory.usage_in_bytes", &usage)) {
            uint64_t inactive = stat_field(dir, "memory.stat",
                                           v2 ? "inactive_file" : "total_inactive_file");
            if (n < cap) {
                snprintf(out[n].path, sizeof out[n].path, "%s", dir);
                out[n].limit = limit;
                out[n].working_set = usage > inactive ? usage - inactive : 0;
            }
            n++;
        }
        size_t len = strlen(dir);
        if (len <= base_len)
            break;
        char *slash = strrchr(dir, '/');
        if (!slash || (size_t)(slash - dir) < base_len)
            break;
        *slash = '\0'; /* the parent group */
        if (strlen(dir) < base_len)
            break;
    }
    return n > cap ? -ENOSPC : n;
}

int gla_read_thread_limits(uint64_t *threads_max, uint64_t *pid_max, uint64_t *nproc)
{
    uint64_t t = 0, p = 0;
    read_u64("/proc/sys/kernel", "threads-max", &t);
    read_u64("/proc/sys/kernel", "pid_max", &p);
    struct rlimit rl;
    uint64_t np = 0;
    if (getrlimit(RLIMIT_NPROC, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        np = (uint64_t)rl.rlim_cur;
    *threads_max = t;
    *pid_max = p;
    *nproc = np;
    return 0;
}

int gla_read_memory(uint64_t *limit, uint64_t *available)
{
    char buf[4096];
    uint64_t lim = 0;
    gla_mem_group groups[GLA_MEM_GROUPS_MAX];
    int n = gla_read_memory_groups(groups, GLA_MEM_GROUPS_MAX);
    for (int i = 0; i < n; i++) {
        if (lim == 0 || groups[i].limit < lim)
            lim = groups[i].limit;
    }
    uint64_t avail = 0;
    if (read_small("/proc/meminfo", buf, sizeof buf) > 0) {
        char *p = strstr(buf, "MemAvailable:");
        if (p)
            avail = strtoull(p + strlen("MemAvailable:"), NULL, 10) * 1024ull;
    }
    *limit = lim;
    *available = avail;
    return 0;
}
