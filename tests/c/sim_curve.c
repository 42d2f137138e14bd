/* sim_curve.c — the simulator from the command line, for benchmarks/sim_vs_real.py: the
 * throughput of fixed pools of the given sizes for one workload, and the size the
 * controller holds after 20 simulated seconds on it.
 *
 *   sim_curve H_MS N_MS W_MS CORES CPU_DIST IO_DIST SEED MEASURE_S SIZE...
 *     CPU_DIST / IO_DIST: fixed | uniform | exp (sim.h)
 * Prints one line per size, "size <n> <tasks/s>", then "controller <target> <little>":
 * the controller's final target and its demand-based (Little's law) size. Exit status 2
 * on bad arguments. */
#include "controller.h"
#include "sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int dist(const char *s, sim_dist *out)
{
    if (!strcmp(s, "fixed"))
        *out = SIM_FIXED;
    else if (!strcmp(s, "uniform"))
        *out = SIM_UNIFORM;
    else if (!strcmp(s, "exp"))
        *out = SIM_EXP;
    else
        return -1;
    return 0;
}

static int number(const char *s, double lo, double *out)
{
    char *end;
    double x = strtod(s, &end);
    if (end == s || *end || !(x >= lo))
        return -1;
    *out = x;
    return 0;
}

int main(int argc, char **argv)
{
    sim_params p;
    double h, n, w, cores, seed, measure;
    sim_dist cd, id;
    if (argc < 10 || number(argv[1], 0, &h) || number(argv[2], 0, &n) || number(argv[3], 0, &w) ||
        number(argv[4], 0.01, &cores) || dist(argv[5], &cd) || dist(argv[6], &id) ||
        number(argv[7], 0, &seed) || number(argv[8], 0.1, &measure)) {
        fprintf(stderr, "usage: sim_curve H_MS N_MS W_MS CORES fixed|uniform|exp fixed|uniform|exp "
                        "SEED MEASURE_S SIZE...\n");
        return 2;
    }
    sim_defaults(&p, h * 1e-3, n * 1e-3, w * 1e-3, cores);
    p.cpu_dist = cd;
    p.io_dist = id;
    p.seed = (unsigned long long)seed;
    for (int i = 9; i < argc; i++) {
        double size;
        if (number(argv[i], 1, &size) || size > 100000) {
            fprintf(stderr, "sim_curve: bad size %s\n", argv[i]);
            return 2;
        }
        printf("size %d %.3f\n", (int)size, sim_fixed_rate(&p, (int)size, 2.0, measure));
        fflush(stdout);
    }
    gla_ctl c;
    if (gla_ctl_init(&c, 1, 2048, cores) != 0)
        return 2;
    sim *s = sim_new(&p, c.target);
    if (!s)
        return 1;
    for (double t = 0; t < 20.0;) {
        double win = gla_ctl_window_s(&c);
        gla_window wd;
        sim_run(s, win, &wd);
        t += win;
        sim_set_workers(s, gla_ctl_step(&c, &wd).target);
    }
    sim_free(s);
    printf("controller %d %.1f\n", c.target, c.little_smooth);
    return 0;
}
