/* got.h — a GOT patcher that knows nothing of what it patches.
 *
 * Contract
 * --------
 * Purpose: find and rewrite the GOT slots through which one loaded ELF object calls
 * functions of other objects. Nothing here knows which functions are hooked, why, or
 * what a wrapper does; the GIL hook (gilhook.c) and the C tests' second hook
 * (tests/c/lib_peer.c, through gla_got_patch) build on it.
 *
 * Design:
 *  - gla_got_walk finds, with dl_iterate_phdr, the one loaded object whose PT_LOAD
 *    segments hold an address (`anchor`), reads its dynamic section and calls a visitor
 *    once per JUMP_SLOT / GLOB_DAT relocation (DT_JMPREL, then DT_RELA) with the
 *    symbol's name, the symbol version it requires (from DT_VERSYM / DT_VERNEED; NULL
 *    when unversioned or local) and the slot's address. Only the x86-64 and aarch64
 *    relocation types are known; on other CPUs nothing is visited.
 *  - gla_got_slot_cas writes a slot by compare-and-swap (acquire-release). A slot inside
 *    the object's PT_GNU_RELRO range is made writable (mprotect) only for the moment of
 *    the swap and read-only again right after.
 *  - gla_got_object_holds says whether a value points into the object's own loaded
 *    segments (its lazy-binding PLT stub, when a slot still holds it).
 *
 * Guarantees: no allocation; no lock of its own (callers serialize their walks if they
 * need to); a slot is never written unless it held exactly the expected value.
 */
#ifndef GIL_ADAPT_GOT_H
#define GIL_ADAPT_GOT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The object being walked (opaque: ask it with the functions below). */
typedef struct gla_got_object gla_got_object;

/* Called once per JUMP_SLOT / GLOB_DAT relocation of the object. Returns 0 to go on, a
 * negative errno to stop the walk (gla_got_walk returns it). */
typedef int (*gla_got_visit)(void *ctx, const gla_got_object *obj, const char *name,
                             const char *version, void **slot);

/* Walks the loaded object that holds `anchor`. object (if object_size > 0) gets its path
 * ("" for the main executable). 0, -ENOENT (no loaded object holds anchor, or it has no
 * dynamic symbols), or the visitor's error; *found (if not NULL): whether an object holds
 * anchor. */
int gla_got_walk(const void *anchor, gla_got_visit visit, void *ctx, char *object,
                 size_t object_size, int *found);

/* 1 if p lies in one of obj's loaded segments, else 0. */
int gla_got_object_holds(const gla_got_object *obj, const void *p);

/* 1 if slot lies in obj's RELRO range (pass it to gla_got_slot_cas), else 0. */
int gla_got_in_relro(const gla_got_object *obj, void **slot);

/* Compare-and-swap on a GOT slot (made writable for the moment if relro): 1 if it held
 * *expected and now holds desired, 0 if it held something else (then *expected is that),
 * or -errno (mprotect failed; the slot is unchanged). */
int gla_got_slot_cas(void **slot, void **expected, void *desired, int relro);

/* In the loaded object that holds `anchor`, every JUMP_SLOT / GLOB_DAT slot of `symbol`
 * (any version) gets new_value (compare-and-swap against the value read, again until it
 * takes; a NULL new_value only reads). *old_value (if not NULL): the first slot's value
 * before, NULL if there is none. Returns the number of slots, or -EINVAL (no symbol),
 * -ENOENT (no object holds anchor) / -errno. Not serialized with gla_hook_install /
 * gla_hook_uninstall. */
int gla_got_patch(const void *anchor, const char *symbol, void *new_value, void **old_value);

#ifdef __cplusplus
}
#endif
#endif
