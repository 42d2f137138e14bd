/* lib_peer.h — a second GOT hook for the C tests (see lib_peer.c). */
#ifndef GIL_ADAPT_TEST_PEER_H
#define GIL_ADAPT_TEST_PEER_H

/* gla_got_patch's signature (gilhook.h): the peer is handed a patcher, so it needs
 * nothing of gil_adapt's to link. */
typedef int (*peer_patcher)(const void *anchor, const char *symbol, void *new_value,
                            void **old_value);

/* The functions the peer hooks: everything lib_waiter.c calls through its PLT. */
enum { PEER_COND_TIMEDWAIT, PEER_COND_SIGNAL, PEER_MUTEX_LOCK, PEER_SEM_WAIT, PEER_CREATE, PEER_N };

/* Points every GOT slot of those functions in the object holding anchor at the peer's
 * counting wrappers, which chain to what each slot held (or to libc's function where
 * that is the object's own lazy-binding stub). Returns the number of functions hooked,
 * or -errno. */
int peer_install(peer_patcher patch, const void *anchor);
/* Puts back each slot that still holds the peer's wrapper; returns how many slots held
 * something else (left alone). */
int peer_uninstall(void);
/* Calls that went through the peer's wrapper for function i since the last reset. */
unsigned long peer_calls(int i);
void peer_reset(void);
const char *peer_name(int i);
void *peer_wrapper(int i);
/* What the peer chains to for function i (what the slot held when it hooked it). */
void *peer_found(int i);
#endif
