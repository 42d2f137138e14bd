/* got.c — the ELF GOT patcher; see got.h for the contract. */
#include "got.h"

#include <elf.h>
#include <errno.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The loaded ELF object that holds the anchor. */
struct gla_got_object {
    uintptr_t base;
    const ElfW(Phdr) *phdr;
    int phnum;
    uintptr_t relro_lo, relro_hi;
};

/* One walk (dl_iterate_phdr's data). */
typedef struct {
    const void *anchor;
    gla_got_visit visit;
    void *ctx;
    char *object;       /* the object's path, if object_size > 0 */
    size_t object_size;
    int found;
    int err;
} walk_ctx;

static uintptr_t dyn_ptr(uintptr_t base, uintptr_t value)
{
    /* glibc relocates most d_ptr entries in place; some loaders do not. */
    return (base != 0 && value < base) ? value + base : value;
}

/* Name of symbol index sym's required version, or NULL (unversioned / local). */
static const char *symbol_version(const ElfW(Half) *versym, const ElfW(Verneed) *verneed,
                                  size_t verneednum, const char *strtab, size_t sym)
{
    if (!versym || !verneed)
        return NULL;
    ElfW(Half) idx = versym[sym] & 0x7fff;
    if (idx <= 1)
        return NULL;
    const ElfW(Verneed) *vn = verneed;
    for (size_t i = 0; i < verneednum; i++) {
        const ElfW(Vernaux) *aux = (const ElfW(Vernaux) *)(const void *)((const char *)vn +
                                                                         vn->vn_aux);
        for (ElfW(Half) j = 0; j < vn->vn_cnt; j++) {
            if (aux->vna_other == idx)
                return strtab + aux->vna_name;
            aux = (const ElfW(Vernaux) *)(const void *)((const char *)aux + aux->vna_next);
        }
        if (vn->vn_next == 0)
            break;
        vn = (const ElfW(Verneed) *)(const void *)((const char *)vn + vn->vn_next);
    }
    return NULL;
}

int gla_got_object_holds(const gla_got_object *obj, const void *p)
{
    uintptr_t a = (uintptr_t)p;
    for (int i = 0; i < obj->phnum; i++) {
        const ElfW(Phdr) *ph = &obj->phdr[i];
        uintptr_t lo = obj->base + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && a >= lo && a < lo + ph->p_memsz)
            return 1;
    }
    return 0;
}

int gla_got_in_relro(const gla_got_object *obj, void **slot)
{
    return (uintptr_t)slot >= obj->relro_lo && (uintptr_t)slot < obj->relro_hi;
}

int gla_got_slot_cas(void **slot, void **expected, void *desired, int relro)
{
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t page_start = (uintptr_t)slot & ~((uintptr_t)page - 1);
    if (relro && mprotect((void *)page_start, (size_t)page, PROT_READ | PROT_WRITE) != 0)
        return -errno;
    int swapped = __atomic_compare_exchange_n(slot, expected, desired, 0, __ATOMIC_ACQ_REL,
                                              __ATOMIC_ACQUIRE);
    if (relro)
        mprotect((void *)page_start, (size_t)page, PROT_READ);
    return swapped;
}

/* Calls the visitor for each JUMP_SLOT / GLOB_DAT relocation of one table. */
static int visit_relocs(walk_ctx *w, const gla_got_object *obj, const ElfW(Rela) *rela,
                        size_t count, const ElfW(Sym) *symtab, const char *strtab,
                        const ElfW(Half) *versym, const ElfW(Verneed) *verneed, size_t verneednum)
{
    for (size_t i = 0; i < count; i++) {
        unsigned long type = ELF64_R_TYPE(rela[i].r_info);
#if defined(__x86_64__)
        if (type != R_X86_64_JUMP_SLOT && type != R_X86_64_GLOB_DAT)
            continue;
#elif defined(__aarch64__)
        if (type != R_AARCH64_JUMP_SLOT && type != R_AARCH64_GLOB_DAT)
            continue;
#else
        (void)type;
        continue;
#endif
        size_t sym = ELF64_R_SYM(rela[i].r_info);
        if (sym == 0)
            continue;
        const char *name = strtab + symtab[sym].st_name;
        const char *version = symbol_version(versym, verneed, verneednum, strtab, sym);
        int rc = w->visit(w->ctx, obj, name, version, (void **)(obj->base + rela[i].r_offset));
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* dl_iterate_phdr's callback: 0 (go on) until the object that holds the anchor, whose
 * relocations it visits; then 1 (stop), the result in w->err. */
static int walk_object(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    walk_ctx *w = data;
    gla_got_object obj = {info->dlpi_addr, info->dlpi_phdr, info->dlpi_phnum, 0, 0};
    uintptr_t anchor = (uintptr_t)w->anchor;
    int contains = 0;
    const ElfW(Dyn) *dyn = NULL;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t lo = obj.base + ph->p_vaddr, hi = lo + ph->p_memsz;
        if (ph->p_type == PT_LOAD && anchor >= lo && anchor < hi)
            contains = 1;
        else if (ph->p_type == PT_DYNAMIC)
            dyn = (const ElfW(Dyn) *)lo;
        else if (ph->p_type == PT_GNU_RELRO) {
            obj.relro_lo = lo;
            obj.relro_hi = hi;
        }
    }
    if (!contains)
        return 0;
    w->found = 1;
    if (w->object_size)
        snprintf(w->object, w->object_size, "%s", info->dlpi_name);
    if (!dyn) {
        w->err = -ENOENT;
        return 1;
    }
    const ElfW(Sym) *symtab = NULL;
    const char *strtab = NULL;
    const ElfW(Rela) *jmprel = NULL, *rela = NULL;
    size_t pltrelsz = 0, relasz = 0, verneednum = 0;
    const ElfW(Half) *versym = NULL;
    const ElfW(Verneed) *verneed = NULL;
    for (const ElfW(Dyn) *d = dyn; d->d_tag != DT_NULL; d++) {
        switch (d->d_tag) {
        case DT_SYMTAB: symtab = (const ElfW(Sym) *)dyn_ptr(obj.base, d->d_un.d_ptr); break;
        case DT_STRTAB: strtab = (const char *)dyn_ptr(obj.base, d->d_un.d_ptr); break;
        case DT_JMPREL: jmprel = (const ElfW(Rela) *)dyn_ptr(obj.base, d->d_un.d_ptr); break;
        case DT_PLTRELSZ: pltrelsz = d->d_un.d_val; break;
        case DT_RELA: rela = (const ElfW(Rela) *)dyn_ptr(obj.base, d->d_un.d_ptr); break;
        case DT_RELASZ: relasz = d->d_un.d_val; break;
        case DT_VERSYM: versym = (const ElfW(Half) *)dyn_ptr(obj.base, d->d_un.d_ptr); break;
        case DT_VERNEED: verneed = (const ElfW(Verneed) *)dyn_ptr(obj.base, d->d_un.d_ptr); break;
        case DT_VERNEEDNUM: verneednum = d->d_un.d_val; break;
        default: break;
        }
    }
    if (!symtab || !strtab) {
        w->err = -ENOENT;
        return 1;
    }
    int rc = 0;
    if (jmprel)
        rc = visit_relocs(w, &obj, jmprel, pltrelsz / sizeof(ElfW(Rela)), symtab, strtab, versym,
                          verneed, verneednum);
    if (rc == 0 && rela)
        rc = visit_relocs(w, &obj, rela, relasz / sizeof(ElfW(Rela)), symtab, strtab, versym,
                          verneed, verneednum);
    w->err = rc;
    return 1;
}

int gla_got_walk(const void *anchor, gla_got_visit visit, void *ctx, char *object,
                 size_t object_size, int *found)
{
    walk_ctx w = {anchor, visit, ctx, object, object_size, 0, 0};
    dl_iterate_phdr(walk_object, &w);
    if (found)
        *found = w.found;
    return w.found ? w.err : -ENOENT;
}

typedef struct {
    const char *symbol;
    void *new_value;
    void **old_value;
    int n;
} got_patch_ctx;

static int got_patch_visit(void *p, const gla_got_object *obj, const char *name,
                           const char *version, void **slot)
{
    (void)version;
    got_patch_ctx *c = p;
    if (strcmp(name, c->symbol) != 0)
        return 0;
    void *v = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (c->n == 0 && c->old_value)
        *c->old_value = v;
    c->n++;
    while (c->new_value) {
        int rc = gla_got_slot_cas(slot, &v, c->new_value, gla_got_in_relro(obj, slot));
        if (rc != 0)
            return rc < 0 ? rc : 0;
    }
    return 0;
}

int gla_got_patch(const void *anchor, const char *symbol, void *new_value, void **old_value)
{
    if (old_value)
        *old_value = NULL;
    if (!symbol)
        return -EINVAL;
    got_patch_ctx c = {symbol, new_value, old_value, 0};
    int rc = gla_got_walk(anchor, got_patch_visit, &c, NULL, 0, NULL);
    return rc < 0 ? rc : c.n;
}
