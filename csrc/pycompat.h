/* pycompat.h — the few CPython C-API calls of 3.10+ that the binding uses, for 3.9.
 *
 * Py_NewRef and PyModule_AddObjectRef exist from 3.10; on 3.9 these static inline
 * equivalents stand in (same semantics: a new reference; add without stealing). */
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

#endif
