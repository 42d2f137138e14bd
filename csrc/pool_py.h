/* pool_py.h — the executor's Python binding (act), part of gil_adapt._core.
 *
 * gla_pool_py_init(module) adds to gil_adapt._core:
 *   Pool          one C pool (pool.h) with its controller; owns the worker threads. It
 *                 keeps itself alive while open or while any worker exists, so tasks
 *                 queued on an executor that is garbage-collected still run.
 *   ExecutorBase  base class of gil_adapt.AdaptiveExecutor: submit() in C (creates a
 *                 standard concurrent.futures.Future, queues a node, no Python frame).
 *   _shutdown_all()       interpreter exit: shut every pool down, wait for its workers.
 *   _after_fork_child()   in a forked child: every pool keeps working without the
 *                         parent's workers and queued tasks (see its docstring).
 * Returns 0, or -1 with an exception set.
 */
#ifndef GIL_ADAPT_POOL_PY_H
#define GIL_ADAPT_POOL_PY_H

#include <Python.h>

int gla_pool_py_init(PyObject *module);

#endif
