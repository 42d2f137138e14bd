/* pycompat.h — the few newer CPython C-API calls the binding uses, for older versions,
 * and how to tell whether this process runs without the GIL.
 *
 * Py_NewRef and PyModule_AddObjectRef exist from 3.10; on 3.9 these static inline
 * equivalents stand in (same semantics: a new reference; add without stealing).
 * Py_BEGIN/END_CRITICAL_SECTION exist from 3.13; before, they are a plain block. */
#ifndef GIL_ADAPT_PYCOMPAT_H
#define GIL_ADAPT_PYCOMPAT_H

#include <Python.h>

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *Py_NewRef(PyObject *o)
{
    Py_INCREF(o);
    return o;
}

static inline int PyModule_AddObjectRef(PyObject *m, const char *name, PyObject *o)
{
    Py_INCREF(o);
    if (PyModule_AddObject(m, name, o) < 0) {
        Py_DECREF(o);
        return -1;
    }
    return 0;
}
#endif

/* 1 when this process runs without the GIL (a free-threaded build with the GIL left
 * off: sys._is_gil_enabled() is False); 0 with a GIL, or when that cannot be told. */
static inline int gla_py_gil_disabled(void)
{
    PyObject *fn = PySys_GetObject("_is_gil_enabled"); /* borrowed */
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

/* Per-object critical sections (3.13): a lock on the object in the free-threaded build,
 * nothing with the GIL. Before 3.13 the GIL is the lock. */
#ifndef Py_BEGIN_CRITICAL_SECTION
#define Py_BEGIN_CRITICAL_SECTION(op) {
#define Py_END_CRITICAL_SECTION() }
#endif

#endif
