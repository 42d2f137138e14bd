/* module.c — the Python binding gil_adapt._core (the only ledger file with Python.h).
 *
 * Exposes the ledger and the hook to Python: install/uninstall with GIL calibration,
 * capabilities, raw per-thread samples, GIL switch count, core and memory limits.
 * Everything is computed in C; the Python layer only shapes dicts.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "gilhook.h"
#include "ledger.h"
#include "procstat.h"
#include "pool_py.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

static char g_gil_reason[320] = "not calibrated";
static int g_free_threaded;

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

static int detect_free_threaded(void)
{
    PyObject *fn = PySys_GetObject("_is_gil_enabled");
    if (!fn)
        return 0;
    PyObject *v = PyObject_CallObject(fn, NULL);
    if (!v) {
        PyErr_Clear();
        return 0;
    }
    int enabled = PyObject_IsTrue(v);
    Py_DECREF(v);
    return enabled == 0;
}

static void calibrate(void)
{
    if (gla_hook_gil())
        return;
    if (g_free_threaded) {
        snprintf(g_gil_reason, sizeof g_gil_reason, "free-threaded build: the GIL is disabled");
        return;
    }
    unsigned long interval_us = switch_interval_us();
    const void *lo, *hi;
    runtime_bounds(&lo, &hi);
    void *first = calibrate_once(interval_us, lo, hi);
    void *second = first ? calibrate_once(interval_us, lo, hi) : NULL;
    if (!first || first != second) {
        snprintf(g_gil_reason, sizeof g_gil_reason,
                 "calibration did not find the GIL's condition variable (unknown layout)");
        return;
    }
    gla_hook_set_gil(first);
    long long before = gla_gil_switches();
    calibrate_once(interval_us, lo, hi);
    if (gla_gil_switches() <= before) {
        gla_hook_set_gil(NULL);
        snprintf(g_gil_reason, sizeof g_gil_reason,
                 "calibration candidate failed the switch-counter check");
        return;
    }
    g_gil_reason[0] = '\0';
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
        snprintf(g_gil_reason, sizeof g_gil_reason, "hook not installed: %s", st.reason);
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
        snprintf(g_gil_reason, sizeof g_gil_reason, "hook uninstalled");
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
    int gil_exact = st.installed && st.gil_known && !g_free_threaded;
    const char *gil_reason = gil_exact ? "" : (st.installed ? g_gil_reason : (st.reason[0] ? st.reason : g_gil_reason));
    return Py_BuildValue(
        "{s:s,s:s,s:s,s:s,s:s,s:O,s:i,s:i,s:i,s:i,s:s}",
        "gil_wait", gil_exact ? "exact" : "unavailable",
        "gil_wait_reason", gil_reason,
        "lock_wait", (st.installed && st.slots_sem > 0) ? "exact" : "unavailable",
        "runq_wait", sched_ok ? "exact" : "unavailable",
        "runq_wait_reason", sched_ok ? "" : "/proc/thread-self/schedstat is not readable",
        "free_threaded", g_free_threaded ? Py_True : Py_False,
        "hook_slots_cond", st.slots_cond,
        "hook_slots_sem", st.slots_sem,
        "hook_slots_chained", st.slots_chained,
        "hook_slots_left", st.slots_left,
        "hook_object", st.object[0] ? st.object : (st.installed ? "(main executable)" : ""));
}

#define U(x) ((unsigned long long)(x))
static PyObject *sample_tuple(const gla_sample *s)
{
    return Py_BuildValue("(iiisKKKKKKKKKKKKKKKKKKiKKKKKKKKKK)", (int)s->tid, s->alive, s->registered, s->name,
                         U(s->start_ns), U(s->wall_ns), U(s->cpu_ns), U(s->runq_ns),
                         U(s->gil_wait_ns), U(s->lock_wait_ns), U(s->idle_ns), U(s->io_wait_ns),
                         U(s->overlap_ns), U(s->raw_cpu_ns), U(s->raw_runq_ns),
                         U(s->raw_gil_wait_ns), U(s->raw_lock_wait_ns), U(s->raw_idle_ns),
                         U(s->gil_tail_ns), U(s->lock_cpu_ns), U(s->lock_runq_ns), U(s->serial), s->waiting, U(s->gil_held_ns),
                         U(s->gil_takes), U(s->take_samples), U(s->take_sample_cpu_ns),
                         U(s->take_sample_runq_ns), U(s->take_sample_tail_ns),
                         U(s->switch_tail_ns), U(s->gil_drops), U(s->drop_samples),
                         U(s->drop_sample_runq_ns));
}

/* read() -> (now_ns, [sample tuples]) ; tuple fields as in SAMPLE_FIELDS (Python side). */
static PyObject *py_read(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
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
        PyObject *t = sample_tuple(&buf[i]);
        if (!t) {
            Py_DECREF(list);
            PyMem_RawFree(buf);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    PyMem_RawFree(buf);
    PyObject *ex = sample_tuple(&exited);
    if (!ex) {
        Py_DECREF(list);
        return NULL;
    }
    return Py_BuildValue("(KNN)", (unsigned long long)now, list, ex);
}

static PyObject *py_exited(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    gla_sample s;
    gla_ledger_exited(&s);
    return sample_tuple(&s);
}

static PyObject *py_finish(PyObject *self, PyObject *args)
{
    (void)self;
    gla_sample s;
    memset(&s, 0, sizeof s);
    unsigned long long wall, cpu, runq, gil, lock, idle, tail, lock_cpu, lock_runq, takes,
        samples, sample_cpu, sample_runq, sample_tail, switch_tail, drops, drop_samples,
        drop_runq;
    if (!PyArg_ParseTuple(args, "KKKKKKKKKKKKKKKKKK", &wall, &cpu, &runq, &gil, &lock, &idle,
                          &tail, &lock_cpu, &lock_runq, &takes, &samples, &sample_cpu,
                          &sample_runq, &sample_tail, &switch_tail, &drops, &drop_samples,
                          &drop_runq))
        return NULL;
    s.gil_drops = drops;
    s.drop_samples = drop_samples;
    s.drop_sample_runq_ns = drop_runq;
    s.switch_tail_ns = switch_tail;
    s.take_sample_tail_ns = sample_tail;
    s.gil_takes = takes;
    s.take_samples = samples;
    s.take_sample_cpu_ns = sample_cpu;
    s.take_sample_runq_ns = sample_runq;
    s.gil_tail_ns = tail;
    s.lock_cpu_ns = lock_cpu;
    s.lock_runq_ns = lock_runq;
    s.wall_ns = wall;
    s.raw_cpu_ns = cpu;
    s.raw_runq_ns = runq;
    s.raw_gil_wait_ns = gil;
    s.raw_lock_wait_ns = lock;
    s.raw_idle_ns = idle;
    gla_sample_finish(&s);
    return sample_tuple(&s);
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
    uint64_t limit = 0, avail = 0;
    gla_read_usable_cores(&affinity, &quota, &usable);
    gla_read_memory(&limit, &avail);
    return Py_BuildValue("{s:i,s:d,s:d,s:K,s:K}", "affinity_cores", affinity,
                         "cpu_quota_cores", quota, "usable_cores", usable,
                         "memory_limit_bytes", (unsigned long long)limit,
                         "memory_available_bytes", (unsigned long long)avail);
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
    {"install", py_install, METH_NOARGS, "Install the GOT hooks and calibrate; returns 0 or -errno."},
    {"uninstall", py_uninstall, METH_NOARGS,
     "Restore the GOT slots that still hold gil_adapt's hooks (a slot another hook took\n"
     "since is left to it: capabilities()['hook_slots_left']); returns 0 or -errno."},
    {"capabilities", py_capabilities, METH_NOARGS, "Which figures are exact, and why not."},
    {"read", py_read, METH_NOARGS,
     "(now_ns, [per-thread sample tuples], exited totals sample tuple as of the same read)"},
    {"exited", py_exited, METH_NOARGS, "Sample tuple of the totals of all exited threads."},
    {"finish", py_finish, METH_VARARGS, "finish(wall, <the raw inputs in _ledger._RAW order>) -> partitioned sample tuple."},
    {"register_thread", py_register_thread, METH_NOARGS, "Register the calling thread in the ledger."},
    {"gil_switches", py_gil_switches, METH_NOARGS, "GIL hand-offs so far, or -1."},
    {"self_times", py_self_times, METH_NOARGS, "(now_ns, thread_cpu_ns, gil_wait_ns, gil_held_ns) of the calling thread; -1 where unknown."},
    {"now_ns", py_now_ns, METH_NOARGS, "CLOCK_MONOTONIC in ns (the ledger's clock)."},
    {"limits", py_limits, METH_NOARGS, "Usable cores and memory budget as read from affinity, cgroups and /proc."},
    {"dropped", py_dropped, METH_NOARGS, "Threads not recorded because the table was full."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "gil_adapt._core", "gil-adapt's C core.", -1, core_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__core(void)
{
    PyObject *m = PyModule_Create(&core_module);
    if (!m)
        return NULL;
    g_free_threaded = detect_free_threaded();
    if (PyModule_AddIntConstant(m, "MAX_THREADS", GLA_MAX_THREADS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    /* Executor binding (pool_py.c) registers itself here. */
    if (gla_pool_py_init(m) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
