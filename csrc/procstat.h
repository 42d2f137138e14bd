/* procstat.h — readers of kernel facts about threads and limits (Linux /proc, cgroups).
 *
 * The one reader of these facts: the Python layer asks the C core (_core.limits(),
 * _core.memory_groups()) rather than reading them again.
 *
 * Contract: plain system-call readers, no allocation, no global state, thread-safe,
 * no Python. Every function returns 0 on success or -errno; outputs are untouched on
 * failure. None of them may be called while the GIL's internal mutex is held (they
 * make system calls) — the hook never calls them.
 */
#ifndef GIL_ADAPT_PROCSTAT_H
#define GIL_ADAPT_PROCSTAT_H

#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* /proc/self/task/<tid>/schedstat (tid 0: the calling thread, via /proc/thread-self):
 * cpu_ns = time on a core, runq_ns = time runnable but waiting for a core. */
int gla_read_schedstat(pid_t tid, uint64_t *cpu_ns, uint64_t *runq_ns);

/* The same from an open schedstat file (pread at offset 0: one system call). */
int gla_read_schedstat_fd(int fd, uint64_t *cpu_ns, uint64_t *runq_ns);

/* Opens the calling thread's schedstat file (O_CLOEXEC); returns the fd or -errno. */
int gla_open_own_schedstat(void);

/* CLOCK_MONOTONIC ns at which thread tid started (from /proc/.../stat starttime;
 * resolution one clock tick, typically 10 ms). */
int gla_read_thread_start_ns(pid_t tid, uint64_t *start_mono_ns);

/* The thread's name (/proc/self/task/<tid>/comm), NUL-terminated, at most cap-1 chars. */
int gla_read_thread_name(pid_t tid, char *buf, int cap);

/* Usable cores: CPUs in the affinity mask, capped by a cgroup CPU quota (v2 cpu.max or
 * v1 cpu.cfs_quota_us/cfs_period_us) when one is set. *affinity receives the mask count,
 * *quota the quota in cores (0 when none), *usable the minimum of the two. */
int gla_read_usable_cores(int *affinity, double *quota, double *usable);

/* Memory budget in bytes: the smallest limit of the memory cgroups this process is in
 * (its own and every ancestor: gla_read_memory_groups), else 0 in *limit; *available
 * receives MemAvailable from /proc/meminfo. */
int gla_read_memory(uint64_t *limit, uint64_t *available);

#define GLA_MEM_PATH_LEN 1024
#define GLA_MEM_GROUPS_MAX 32

typedef struct {
    char path[GLA_MEM_PATH_LEN]; /* the group's directory under /sys/fs/cgroup */
    uint64_t limit;              /* v2 memory.max, v1 memory.limit_in_bytes */
    uint64_t working_set;        /* usage less inactive file pages (what the kernel
                                    reclaims before it kills anything) */
} gla_mem_group;

/* Every memory cgroup from this process's own up to the hierarchy's root that sets a
 * limit (v2, or v1's memory controller), nearest first, with its usage now. Returns how
 * many (0: none limits), or -ENOSPC when more than cap do (the first cap are filled). */
int gla_read_memory_groups(gla_mem_group *out, int cap);

/* The kernel's limits on threads: /proc/sys/kernel/threads-max and pid_max, and this
 * process's RLIMIT_NPROC soft limit (0 where unreadable or unlimited). */
int gla_read_thread_limits(uint64_t *threads_max, uint64_t *pid_max, uint64_t *nproc);

#ifdef __cplusplus
}
#endif
#endif
