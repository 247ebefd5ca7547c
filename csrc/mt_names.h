/* The names of the core's enums, in enum order: the one table of each. The binding exports
 * them to Python and looks names up here, so Python passes names and no integer that must
 * match an enum's order crosses the boundary. */
#ifndef MT_NAMES_H
#define MT_NAMES_H

#include <stddef.h>

#define MT_GATE_COUNT 6      /* mt_gate_kind (mt_moe.h) */
#define MT_EXPERT_COUNT 2    /* mt_expert_kind (mt_moe.h) */
#define MT_INPUT_COUNT 4     /* mt_input_kind (mt_train.h) */
#define MT_OPT_COUNT 4       /* mt_opt_kind (mt_optim.h) */
#define MT_SCHEDULE_COUNT 4  /* mt_lr_schedule (mt_optim.h) */
#define MT_EM_EXPERT_COUNT 2 /* mt_em_expert (mt_em.h) */
#define MT_EM_ACT_COUNT 2    /* mt_em_act (mt_em.h) */
#define MT_GMOE_COV_COUNT 2  /* mt_gmoe_cov (mt_gmoe.h) */

extern const char *const mt_gate_names[MT_GATE_COUNT];
extern const char *const mt_expert_names[MT_EXPERT_COUNT];
extern const char *const mt_act_names[];  /* MT_ACT_COUNT entries (mt_act.h) */
extern const char *const mt_input_names[MT_INPUT_COUNT];
extern const char *const mt_opt_names[MT_OPT_COUNT];
extern const char *const mt_schedule_names[MT_SCHEDULE_COUNT];
extern const char *const mt_em_expert_names[MT_EM_EXPERT_COUNT];
extern const char *const mt_em_act_names[MT_EM_ACT_COUNT];
extern const char *const mt_gmoe_cov_names[MT_GMOE_COV_COUNT];

/* Index of name in names[0 .. count), or -1. */
int mt_name_index(const char *const *names, size_t count, const char *name);

/* names[i], or "?" when i is outside [0, count). */
const char *mt_name_of(const char *const *names, size_t count, int i);

#endif
