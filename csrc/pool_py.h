/* pool_py.h — the executor's Python binding (act), part of gil_adapt._core.
 *
 * gla_pool_py_exec(module, state) adds to gil_adapt._core (multi-phase initialisation:
 * one call per module object, i.e. per interpreter that imports it):
 *   Pool          one C pool (pool.h) with its controller; owns the worker threads. It
 *                 keeps itself alive while open or while any worker exists, so tasks
 *                 queued on an executor that is garbage-collected still run.
 *   ExecutorBase  base class of gil_adapt.AdaptiveExecutor: submit() in C (creates a
 *                 standard concurrent.futures.Future, queues a node, no Python frame).
 *   _shutdown_all()       interpreter exit: shut every pool down, wait for its workers.
 *   _after_fork_child()   in a forked child: every pool keeps working without the
 *                         parent's workers and queued tasks (see its docstring).
 * Both types are heap types made from the module (PyType_FromModuleAndSpec); what they
 * share (the Future class, its states, interned attribute names) lives in the module's
 * state, reached from a Pool through its type. A Pool holds its type, which holds the
 * module: the state outlives every Pool and every worker using it.
 *
 * Pools belong to the main interpreter: their workers attach with PyGILState_Ensure,
 * which knows no other. Made in a sub-interpreter, Pool raises RuntimeError; a
 * sub-interpreter's exit (_shutdown_all there) touches no pool. The list of pools is
 * process-wide for that reason (fork and exit walk it).
 * The module's state must begin with a gla_pool_py_state (the types find it there).
 * gla_pool_py_exec returns 0, or -1 with an exception set.
 */
#ifndef GIL_ADAPT_POOL_PY_H
#define GIL_ADAPT_POOL_PY_H

#include <Python.h>

typedef struct {
    PyTypeObject *pool_type, *exec_type;
    PyObject *future_type; /* concurrent.futures.Future */
    /* Future's internals for the fast path (see future_fast_init in pool_py.c). */
    int future_fast;
    PyObject *PENDING, *RUNNING, *FINISHED;
    PyObject *s_set_running, *s_set_result, *s_set_exception, *s_cancel;
    PyObject *s__condition, *s__lock, *s__state, *s__result, *s__waiters, *s__done_callbacks,
        *s__invoke_callbacks, *s_acquire, *s_release;
    /* The lock type whose new futures' lock parts are taken out of the garbage
     * collector's lists (see future_untrack_lock in pool_py.c), or NULL. */
    PyObject *rlock_type;
    PyObject *s__release_save, *s__acquire_restore, *s__is_owned;
} gla_pool_py_state;

int gla_pool_py_exec(PyObject *module, gla_pool_py_state *state);
/* The module's m_traverse / m_clear / m_free parts for this state. */
int gla_pool_py_traverse(gla_pool_py_state *state, visitproc visit, void *arg);
void gla_pool_py_clear(gla_pool_py_state *state);
void gla_pool_py_free(gla_pool_py_state *state);

#endif
