/* module.c — the Python binding gil_adapt._core (the only ledger file with Python.h).
 *
 * Exposes the ledger and the hook to Python: install/uninstall with GIL calibration,
 * capabilities, per-thread records, GIL switch count, core and memory limits. Everything
 * is computed in C; the Python layer only shapes dicts.
 *
 * Per-thread figures cross as named records (ThreadSample, a PyStructSequence) whose
 * fields, and the keyword inputs of finish(), come from one table (SAMPLE_TABLE); Python
 * reads the names from SAMPLE_FIELDS / SAMPLE_INPUTS instead of repeating an order.
 *
 * Multi-phase initialisation: each interpreter that imports the module gets its own module
 * object and state (the record type, the executor's types and cached objects, see
 * pool_py.h). What the hook and the ledger measure is process-wide, and so is what this
 * file keeps outside the state (the calibration's outcome, whether the build is
 * free-threaded).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "gilhook.h"
#include "ledger.h"
#include "procstat.h"
#include "pool_py.h"
#include "pycompat.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

/* Why GIL waits are not exact (empty when they are): process-wide, like the hook; written
 * by install/uninstall, read by capabilities, under g_reason_lock (no GIL to rely on in
 * the free-threaded build). */
static char g_gil_reason[320] = "not calibrated";
static pthread_mutex_t g_reason_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int g_free_threaded; /* the GIL is disabled in this process */

static void set_reason(const char *fmt, const char *arg)
{
    pthread_mutex_lock(&g_reason_lock);
    snprintf(g_gil_reason, sizeof g_gil_reason, fmt, arg);
    pthread_mutex_unlock(&g_reason_lock);
}

/* ---- calibration ------------------------------------------------------------------ */

typedef struct {
    _Atomic int holding;
    uint64_t hold_ns;
} cal_ctx;

/* Holds the GIL in a C spin (no Python code, no import) for hold_ns. */
static void *cal_holder(void *arg)
{
    cal_ctx *ctx = arg;
    PyGILState_STATE st = PyGILState_Ensure();
    atomic_store(&ctx->holding, 1);
    uint64_t until = gla_now_ns() + ctx->hold_ns;
    while (gla_now_ns() < until) {
    }
    PyGILState_Release(st);
    return NULL;
}

static unsigned long switch_interval_us(void)
{
    PyObject *fn = PySys_GetObject("getswitchinterval"); /* borrowed */
    if (!fn)
        return 0;
    PyObject *v = PyObject_CallObject(fn, NULL);
    if (!v) {
        PyErr_Clear();
        return 0;
    }
    double s = PyFloat_AsDouble(v);
    Py_DECREF(v);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return (unsigned long)(s * 1e6 + 0.5);
}

/* Bounds of the _PyRuntime object (the main interpreter's GIL lives inside it). */
static void runtime_bounds(const void **lo, const void **hi)
{
    *lo = *hi = NULL;
    void *rt = dlsym(RTLD_DEFAULT, "_PyRuntime");
    if (!rt)
        return;
    Dl_info info;
    const ElfW(Sym) *sym = NULL;
    if (dladdr1(rt, &info, (void **)&sym, RTLD_DL_SYMENT) && sym && sym->st_size > 0) {
        *lo = rt;
        *hi = (const char *)rt + sym->st_size;
    }
}

/* One GIL hand-off observed from the waiting side; returns the GIL's cond or NULL. */
static void *calibrate_once(unsigned long interval_us, const void *lo, const void *hi)
{
    cal_ctx ctx;
    atomic_init(&ctx.holding, 0);
    ctx.hold_ns = 3ull * interval_us * 1000ull + 2000000ull;
    pthread_t holder;
    void *conds[GLA_CAL_MAX];
    int n = 0, started = 0;
    Py_BEGIN_ALLOW_THREADS
    started = pthread_create(&holder, NULL, cal_holder, &ctx) == 0;
    if (started) {
        struct timespec pause = {0, 100000};
        for (int i = 0; i < 20000 && !atomic_load(&ctx.holding); i++)
            nanosleep(&pause, NULL);
        gla_hook_calibrate_begin();
    }
    Py_END_ALLOW_THREADS /* waits on the GIL's condition while the holder spins */
    if (!started)
        return NULL;
    n = gla_hook_calibrate_end(conds, GLA_CAL_MAX);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(holder, NULL);
    Py_END_ALLOW_THREADS
    void *found = NULL;
    for (int i = 0; i < n; i++) {
        if (gla_gil_layout_ok(conds[i], interval_us, lo, hi)) {
            if (found && found != conds[i])
                return NULL; /* ambiguous */
            found = conds[i];
        }
    }
    return found;
}

static void calibrate(void)
{
    if (gla_hook_gil())
        return;
    if (atomic_load(&g_free_threaded)) {
        set_reason("%s", "not applicable: free-threaded build, the GIL is disabled");
        return;
    }
    unsigned long interval_us = switch_interval_us();
    const void *lo, *hi;
    runtime_bounds(&lo, &hi);
    void *first = calibrate_once(interval_us, lo, hi);
    void *second = first ? calibrate_once(interval_us, lo, hi) : NULL;
    if (!first || first != second) {
        set_reason("%s", "calibration did not find the GIL's condition variable (unknown layout)");
        return;
    }
    gla_hook_set_gil(first);
    long long before = gla_gil_switches();
    calibrate_once(interval_us, lo, hi);
    if (gla_gil_switches() <= before) {
        gla_hook_set_gil(NULL);
        set_reason("%s", "calibration candidate failed the switch-counter check");
        return;
    }
    set_reason("%s", "");
}

/* ---- Python functions --------------------------------------------------------------- */

static PyObject *py_install(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    int rc = gla_ledger_init();
    if (rc < 0)
        return PyErr_Format(PyExc_OSError, "gil_adapt: ledger init failed: %s", strerror(-rc));
    gla_ledger_self();
    rc = gla_hook_install((const void *)&PyEval_SaveThread);
    if (rc == 0)
        calibrate();
    else {
        gla_hook_status st;
        gla_hook_get_status(&st);
        set_reason("hook not installed: %s", st.reason);
    }
    return PyLong_FromLong(rc);
}

static PyObject *py_uninstall(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = gla_hook_uninstall();
    Py_END_ALLOW_THREADS
    if (rc == 0)
        set_reason("%s", "hook uninstalled");
    return PyLong_FromLong(rc);
}

static PyObject *py_capabilities(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    gla_hook_status st;
    gla_hook_get_status(&st);
    uint64_t cpu, runq;
    int sched_ok = gla_read_schedstat(0, &cpu, &runq) == 0;
    int free_threaded = atomic_load(&g_free_threaded);
    int gil_exact = st.installed && st.gil_known && !free_threaded;
    char reason[sizeof g_gil_reason];
    pthread_mutex_lock(&g_reason_lock);
    snprintf(reason, sizeof reason, "%s", g_gil_reason);
    pthread_mutex_unlock(&g_reason_lock);
    const char *gil_reason = gil_exact
                                 ? ""
                                 : (st.installed ? reason : (st.reason[0] ? st.reason : reason));
    if (free_threaded)
        gil_reason = "not applicable: free-threaded build, the GIL is disabled";
    /* clang-format off */
    return Py_BuildValue(
        "{s:s,s:s,s:s,s:s,s:s,s:O,s:i,s:i,s:i,s:i,s:s}",
        "gil_wait", gil_exact ? "exact" : (free_threaded ? "not applicable" : "unavailable"),
        "gil_wait_reason", gil_reason,
        "lock_wait", (st.installed && st.slots_sem > 0) ? "exact" : "unavailable",
        "runq_wait", sched_ok ? "exact" : "unavailable",
        "runq_wait_reason", sched_ok ? "" : "/proc/thread-self/schedstat is not readable",
        "free_threaded", free_threaded ? Py_True : Py_False,
        "hook_slots_cond", st.slots_cond,
        "hook_slots_sem", st.slots_sem,
        "hook_slots_chained", st.slots_chained,
        "hook_slots_left", st.slots_left,
        "hook_object", st.object[0] ? st.object : (st.installed ? "(main executable)" : ""));
    /* clang-format on */
}

/* ---- per-thread records -------------------------------------------------------------
 *
 * One table names every field of a gla_sample as Python sees it: the named record type
 * (ThreadSample, a PyStructSequence), the field list Python reads (SAMPLE_FIELDS), and the
 * keyword arguments of finish() (the inputs of the partition, SAMPLE_INPUTS). */

enum { F_PID, F_INT, F_U64, F_NAME };

/* X(python name, gla_sample member, kind, input of the partition, doc) */
#define SAMPLE_TABLE(X)                                                                         \
    X(tid, tid, F_PID, 0, "native thread id")                                                   \
    X(alive, alive, F_INT, 0, "0 once the thread has exited (figures are its final totals)")    \
    X(registered, registered, F_INT, 0, "1 if the thread registered itself (exact start/exit)") \
    X(os_name, name, F_NAME, 0, "the thread's name as the kernel knows it")                     \
    X(start_ns, start_ns, F_U64, 0, "CLOCK_MONOTONIC when its accounting started")              \
    X(wall_ns, wall_ns, F_U64, 1, "time accounted")                                             \
    X(cpu_ns, cpu_ns, F_U64, 0, "on a core, outside lock waits")                                \
    X(runq_wait_ns, runq_ns, F_U64, 0, "runnable, waiting for a core, outside waits")           \
    X(gil_wait_ns, gil_wait_ns, F_U64, 0, "waiting for the GIL")                                \
    X(lock_wait_ns, lock_wait_ns, F_U64, 0, "waiting for a Python-level lock")                  \
    X(idle_ns, idle_ns, F_U64, 0, "an idle worker waiting for work")                            \
    X(io_wait_ns, io_wait_ns, F_U64, 0, "the rest of the wall time (I/O, sleep, native waits)") \
    X(overlap_ns, overlap_ns, F_U64, 0, "kernel cpu+runq found inside waits, counted once")     \
    X(raw_cpu_ns, raw_cpu_ns, F_U64, 1, "kernel cpu total")                                     \
    X(raw_runq_ns, raw_runq_ns, F_U64, 1, "kernel run-queue total")                             \
    X(raw_gil_wait_ns, raw_gil_wait_ns, F_U64, 1, "GIL waits as timed by the hook")             \
    X(raw_lock_wait_ns, raw_lock_wait_ns, F_U64, 1, "lock waits as timed by the hook")          \
    X(raw_idle_ns, raw_idle_ns, F_U64, 1, "idle waits as timed")                                \
    X(gil_tail_ns, gil_tail_ns, F_U64, 1, "wake-up-to-return part of the GIL waits")            \
    X(lock_cpu_ns, lock_cpu_ns, F_U64, 1, "kernel cpu inside lock waits")                       \
    X(lock_runq_ns, lock_runq_ns, F_U64, 1, "kernel run-queue time inside lock waits")          \
    X(serial, serial, F_U64, 0, "unique per record life (tells a reused tid apart)")            \
    X(waiting, waiting, F_INT, 0, "the wait under way: a gla_wait_kind, or -1")                 \
    X(gil_held_ns, gil_held_ns, F_U64, 0, "time holding the GIL (overlaps cpu and runq)")       \
    X(gil_takes, gil_takes, F_U64, 1, "contended GIL takes")                                    \
    X(take_samples, take_samples, F_U64, 1, "process-wide takes sampled exactly")               \
    X(take_sample_cpu_ns, take_sample_cpu_ns, F_U64, 1, "their cpu")                            \
    X(take_sample_runq_ns, take_sample_runq_ns, F_U64, 1, "their run-queue time")               \
    X(take_sample_tail_ns, take_sample_tail_ns, F_U64, 1, "their wake-up tails")                \
    X(switch_tail_ns, switch_tail_ns, F_U64, 1, "wake-up tails of switch waits")                \
    X(gil_drops, gil_drops, F_U64, 1, "this thread's GIL drops")                                \
    X(drop_samples, drop_samples, F_U64, 1, "process-wide drops sampled")                       \
    X(drop_sample_runq_ns, drop_sample_runq_ns, F_U64, 1, "their run-queue time")

typedef struct {
    const char *name;
    int kind;
    size_t offset;
    int input;
} sample_field;

#define FIELD_ROW(py, member, kind, input, doc) {#py, kind, offsetof(gla_sample, member), input},
static const sample_field sample_fields[] = {SAMPLE_TABLE(FIELD_ROW)};
#undef FIELD_ROW
#define N_SAMPLE_FIELDS ((int)(sizeof sample_fields / sizeof sample_fields[0]))

#define SEQ_ROW(py, member, kind, input, doc) {#py, doc},
static PyStructSequence_Field sample_seq_fields[] = {SAMPLE_TABLE(SEQ_ROW){NULL, NULL}};
#undef SEQ_ROW

static PyStructSequence_Desc sample_desc = {
    "gil_adapt._core.ThreadSample",
    "One thread's cumulative figures at one instant (ns). wall = cpu + runq_wait + gil_wait"
    " + lock_wait + idle + io_wait; the input fields (SAMPLE_INPUTS) are what finish()"
    " partitions.",
    sample_seq_fields,
    N_SAMPLE_FIELDS,
};

typedef struct {
    gla_pool_py_state pool; /* first: the executor's types find it at the state's start */
    PyTypeObject *sample_type;
} core_state;

static core_state *state_of(PyObject *module)
{
    return (core_state *)PyModule_GetState(module);
}

static PyObject *field_value(const gla_sample *s, const sample_field *f)
{
    const char *p = (const char *)s + f->offset;
    switch (f->kind) {
    case F_PID: return PyLong_FromLong((long)*(const pid_t *)p);
    case F_INT: return PyLong_FromLong(*(const int *)p);
    case F_NAME: return PyUnicode_DecodeFSDefault(p);
    default: return PyLong_FromUnsignedLongLong(*(const uint64_t *)p);
    }
}

static PyObject *sample_record(PyTypeObject *type, const gla_sample *s)
{
    PyObject *rec = PyStructSequence_New(type);
    if (!rec)
        return NULL;
    for (int i = 0; i < N_SAMPLE_FIELDS; i++) {
        PyObject *v = field_value(s, &sample_fields[i]);
        if (!v) {
            Py_DECREF(rec);
            return NULL;
        }
        PyStructSequence_SetItem(rec, i, v);
    }
    return rec;
}

/* read() -> (now_ns, [ThreadSample], exited totals as a ThreadSample of the same read) */
static PyObject *py_read(PyObject *self, PyObject *args)
{
    (void)args;
    PyTypeObject *type = state_of(self)->sample_type;
    size_t cap = 256, n = 0;
    gla_sample *buf = NULL;
    uint64_t now = 0;
    gla_sample exited;
    int rc;
    for (;;) {
        gla_sample *grown = PyMem_RawRealloc(buf, cap * sizeof *buf);
        if (!grown) {
            PyMem_RawFree(buf);
            return PyErr_NoMemory();
        }
        buf = grown;
        Py_BEGIN_ALLOW_THREADS
        rc = gla_ledger_read_exited(buf, cap, &n, &exited);
        now = gla_now_ns();
        Py_END_ALLOW_THREADS
        if (rc != -ENOSPC || cap >= GLA_MAX_THREADS)
            break;
        cap *= 4;
    }
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list) {
        PyMem_RawFree(buf);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *t = sample_record(type, &buf[i]);
        if (!t) {
            Py_DECREF(list);
            PyMem_RawFree(buf);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    PyMem_RawFree(buf);
    PyObject *ex = sample_record(type, &exited);
    if (!ex) {
        Py_DECREF(list);
        return NULL;
    }
    return Py_BuildValue("(KNN)", (unsigned long long)now, list, ex);
}

static PyObject *py_exited(PyObject *self, PyObject *args)
{
    (void)args;
    gla_sample s;
    gla_ledger_exited(&s);
    return sample_record(state_of(self)->sample_type, &s);
}

/* finish(**inputs) -> ThreadSample: the partition of the given inputs (SAMPLE_INPUTS, by
 * name; a missing one is 0). */
static PyObject *py_finish(PyObject *self, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0)
        return PyErr_Format(PyExc_TypeError,
                            "finish() takes keyword arguments only (the names in SAMPLE_INPUTS)");
    gla_sample s;
    memset(&s, 0, sizeof s);
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (kwargs && PyDict_Next(kwargs, &pos, &key, &value)) {
        const sample_field *f = NULL;
        for (int i = 0; i < N_SAMPLE_FIELDS && !f; i++) {
            if (sample_fields[i].input &&
                PyUnicode_CompareWithASCIIString(key, sample_fields[i].name) == 0)
                f = &sample_fields[i];
        }
        if (!f)
            return PyErr_Format(PyExc_TypeError, "finish() got an unexpected keyword argument %R",
                                key);
        unsigned long long v = PyLong_AsUnsignedLongLong(value);
        if (v == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
        *(uint64_t *)((char *)&s + f->offset) = (uint64_t)v;
    }
    gla_sample_finish(&s);
    return sample_record(state_of(self)->sample_type, &s);
}

static PyObject *py_register_thread(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyBool_FromLong(gla_ledger_self() != NULL);
}

static PyObject *py_gil_switches(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyLong_FromLongLong(gla_gil_switches());
}

/* The calling thread's own clocks for per-task figures: (monotonic, thread CPU, GIL wait,
   GIL held) in ns; the GIL figures are -1 where the hook is not installed. */
static PyObject *py_self_times(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    struct timespec ts;
    long long cpu = -1, gil_wait = -1, gil_held = -1;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
        cpu = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (gla_hook_gil() != NULL) { /* hooked and calibrated */
        gla_thread *t = gla_ledger_self();
        if (t)
            gil_wait = (long long)gla_ledger_wait(t, GLA_GIL_WAIT);
        gil_held = (long long)gla_hook_self_gil_held_ns();
    }
    return Py_BuildValue("(KLLL)", (unsigned long long)gla_now_ns(), cpu, gil_wait, gil_held);
}

static PyObject *py_now_ns(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyLong_FromUnsignedLongLong(gla_now_ns());
}

static PyObject *py_limits(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    int affinity = 0;
    double quota = 0, usable = 0;
    uint64_t limit = 0, avail = 0, threads_max = 0, pid_max = 0, nproc = 0;
    gla_read_usable_cores(&affinity, &quota, &usable);
    gla_read_memory(&limit, &avail);
    gla_read_thread_limits(&threads_max, &pid_max, &nproc);
    /* clang-format off */
    return Py_BuildValue("{s:i,s:d,s:d,s:K,s:K,s:K,s:K,s:K}", "affinity_cores", affinity,
                         "cpu_quota_cores", quota, "usable_cores", usable,
                         "memory_limit_bytes", (unsigned long long)limit,
                         "memory_available_bytes", (unsigned long long)avail,
                         "threads_max", (unsigned long long)threads_max,
                         "pid_max", (unsigned long long)pid_max,
                         "nproc_limit", (unsigned long long)nproc);
    /* clang-format on */
}

static PyObject *py_memory_groups(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    gla_mem_group *groups = PyMem_RawMalloc(GLA_MEM_GROUPS_MAX * sizeof *groups);
    if (!groups)
        return PyErr_NoMemory();
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = gla_read_memory_groups(groups, GLA_MEM_GROUPS_MAX);
    Py_END_ALLOW_THREADS
    if (n == -ENOSPC)
        n = GLA_MEM_GROUPS_MAX;
    PyObject *list = PyList_New(0);
    for (int i = 0; list && i < n; i++) {
        PyObject *item = Py_BuildValue("(sKK)", groups[i].path, (unsigned long long)groups[i].limit,
                                       (unsigned long long)groups[i].working_set);
        if (!item || PyList_Append(list, item) < 0)
            Py_CLEAR(list);
        Py_XDECREF(item);
    }
    PyMem_RawFree(groups);
    return list;
}

static PyObject *py_dropped(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyLong_FromUnsignedLongLong(gla_ledger_dropped());
}

/* arg as a count in [0, 1e6] (the calm settings); -1 with ValueError naming `what` and
 * what 0 means. */
static int calm_count(PyObject *arg, const char *what, const char *zero)
{
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > 1000000) {
        PyErr_Format(PyExc_ValueError, "%s must be a count >= 0 (0 = %s), not %ld", what, zero, v);
        return -1;
    }
    return (int)v;
}

static PyObject *py_set_calm(PyObject *self, PyObject *arg)
{
    (void)self;
    int keep = calm_count(arg, "keep", "off");
    return keep < 0 ? NULL : PyLong_FromLong(gla_hook_set_calm(keep));
}

static PyObject *py_set_calm_above(PyObject *self, PyObject *arg)
{
    (void)self;
    int above = calm_count(arg, "above", "at any count");
    return above < 0 ? NULL : PyLong_FromLong(gla_hook_set_calm_above(above));
}

static PyObject *py_calm(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    uint64_t stretched = 0;
    int keep = gla_hook_calm(&stretched);
    return Py_BuildValue("(iKi)", keep, (unsigned long long)stretched, gla_hook_calm_above());
}

static PyMethodDef core_methods[] = {
    {"set_calm", py_set_calm, METH_O, "set_calm(keep) -> previous: GIL waiter thinning (0 = off)."},
    {"set_calm_above", py_set_calm_above, METH_O,
     "set_calm_above(n) -> previous: thin only while more than n threads wait for the GIL."},
    {"calm", py_calm, METH_NOARGS, "(keep, waits stretched so far, above)."},
    {"install", py_install, METH_NOARGS,
     "Install the GOT hooks and calibrate; returns 0 or -errno."},
    {"uninstall", py_uninstall, METH_NOARGS,
     "Restore the GOT slots that still hold gil_adapt's hooks (a slot another hook took\n"
     "since is left to it: capabilities()['hook_slots_left']); returns 0 or -errno."},
    {"capabilities", py_capabilities, METH_NOARGS, "Which figures are exact, and why not."},
    {"read", py_read, METH_NOARGS,
     "(now_ns, [ThreadSample per thread], the exited threads' totals as a ThreadSample)"},
    {"exited", py_exited, METH_NOARGS, "ThreadSample of the totals of all exited threads."},
    {"finish", (PyCFunction)(void (*)(void))py_finish, METH_VARARGS | METH_KEYWORDS,
     "finish(**inputs) -> ThreadSample: the partition of the inputs named in SAMPLE_INPUTS."},
    {"register_thread", py_register_thread, METH_NOARGS,
     "Register the calling thread in the ledger."},
    {"gil_switches", py_gil_switches, METH_NOARGS, "GIL hand-offs so far, or -1."},
    {"self_times", py_self_times, METH_NOARGS,
     "(now_ns, thread_cpu_ns, gil_wait_ns, gil_held_ns) of the calling thread; -1 where unknown."},
    {"now_ns", py_now_ns, METH_NOARGS, "CLOCK_MONOTONIC in ns (the ledger's clock)."},
    {"limits", py_limits, METH_NOARGS,
     "Usable cores, memory budget and thread limits as read from affinity, cgroups and /proc."},
    {"memory_groups", py_memory_groups, METH_NOARGS,
     "[(path, limit_bytes, working_set_bytes)]: the memory cgroups from this process's own\n"
     "up to the root that set a limit, nearest first."},
    {"dropped", py_dropped, METH_NOARGS, "Threads not recorded because the table was full."},
    {NULL, NULL, 0, NULL},
};

static PyObject *name_tuple(int inputs_only)
{
    PyObject *list = PyList_New(0);
    for (int i = 0; list && i < N_SAMPLE_FIELDS; i++) {
        if (inputs_only && !sample_fields[i].input)
            continue;
        PyObject *name = PyUnicode_FromString(sample_fields[i].name);
        if (!name || PyList_Append(list, name) < 0)
            Py_CLEAR(list);
        Py_XDECREF(name);
    }
    PyObject *t = list ? PyList_AsTuple(list) : NULL;
    Py_XDECREF(list);
    return t;
}

static int core_exec(PyObject *m)
{
    core_state *st = state_of(m);
    atomic_store(&g_free_threaded, gla_py_gil_disabled());
    st->sample_type = PyStructSequence_NewType(&sample_desc);
    if (!st->sample_type ||
        PyModule_AddObjectRef(m, "ThreadSample", (PyObject *)st->sample_type) < 0)
        return -1;
    PyObject *fields = name_tuple(0), *inputs = name_tuple(1);
    int rc = fields && inputs && PyModule_AddObjectRef(m, "SAMPLE_FIELDS", fields) == 0 &&
                     PyModule_AddObjectRef(m, "SAMPLE_INPUTS", inputs) == 0
                 ? 0
                 : -1;
    Py_XDECREF(fields);
    Py_XDECREF(inputs);
    if (rc < 0 || PyModule_AddIntConstant(m, "MAX_THREADS", GLA_MAX_THREADS) < 0)
        return -1;
    return gla_pool_py_exec(m, &st->pool); /* the executor's types and functions */
}

static int core_traverse(PyObject *m, visitproc visit, void *arg)
{
    core_state *st = state_of(m);
    Py_VISIT(st->sample_type);
    return gla_pool_py_traverse(&st->pool, visit, arg);
}

static int core_clear(PyObject *m)
{
    core_state *st = state_of(m);
    Py_CLEAR(st->sample_type);
    gla_pool_py_clear(&st->pool);
    return 0;
}

static void core_free(void *m)
{
    core_clear((PyObject *)m);
    gla_pool_py_free(&state_of((PyObject *)m)->pool);
}

/* Multi-phase initialisation: one module object and state per interpreter. The ledger and
 * the hook are process-wide (they patch the process's GOT and time its threads), so
 * interpreters sharing the main GIL (legacy sub-interpreters) may import the module, and
 * interpreters with a GIL of their own are refused at import (ImportError). The module runs
 * without the GIL (Py_mod_gil): the C state that the GIL used to guard has its own locks
 * (the reason text here, the pool list in pool_py.c), a per-object critical section, or is
 * set once before it is shared; the ledger, hook and pool were always thread-safe C. */
static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, (void *)core_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gil_adapt._core",
    .m_doc = "gil-adapt's C core.",
    .m_size = sizeof(core_state),
    .m_methods = core_methods,
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC PyInit__core(void)
{
    return PyModuleDef_Init(&core_module);
}
