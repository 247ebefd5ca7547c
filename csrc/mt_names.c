#include "mt_names.h"

#include <string.h>

#include "mt_act.h"
#include "mt_em.h"
#include "mt_gmoe.h"
#include "mt_moe.h"
#include "mt_optim.h"
#include "mt_train.h"

/* Each table must list its enum's values in order; the asserts tie the counts to the enums. */
_Static_assert(MT_GATE_NORMALIZED_SIGMOID + 1 == MT_GATE_COUNT, "mt_gate_names");
_Static_assert(MT_EXPERT_LINEAR + 1 == MT_EXPERT_COUNT, "mt_expert_names");
_Static_assert(MT_INPUT_GRID + 1 == MT_INPUT_COUNT, "mt_input_names");
_Static_assert(MT_OPT_ADAM + 1 == MT_OPT_COUNT, "mt_opt_names");
_Static_assert(MT_LR_INVTIME + 1 == MT_SCHEDULE_COUNT, "mt_schedule_names");
_Static_assert(MT_EM_FFN + 1 == MT_EM_EXPERT_COUNT, "mt_em_expert_names");
_Static_assert(MT_EM_TANH + 1 == MT_EM_ACT_COUNT, "mt_em_act_names");
_Static_assert(MT_GMOE_DIAG + 1 == MT_GMOE_COV_COUNT, "mt_gmoe_cov_names");

const char *const mt_gate_names[MT_GATE_COUNT] = {"softmax", "topk", "temperature",
                                                  "hierarchical", "sigmoid",
                                                  "normalized_sigmoid"};
const char *const mt_expert_names[MT_EXPERT_COUNT] = {"ffn", "linear"};
const char *const mt_act_names[MT_ACT_COUNT] = {"identity", "relu", "leaky_relu", "gelu", "tanh",
                                                "sigmoid", "he1", "he2", "he3", "he4", "he5",
                                                "he6", "he7", "he8"};
const char *const mt_input_names[MT_INPUT_COUNT] = {"gaussian", "mixture", "uniform", "grid"};
const char *const mt_opt_names[MT_OPT_COUNT] = {"sgd", "momentum", "nesterov", "adam"};
const char *const mt_schedule_names[MT_SCHEDULE_COUNT] = {"constant", "step", "cosine",
                                                          "inverse_time"};
const char *const mt_em_expert_names[MT_EM_EXPERT_COUNT] = {"linear", "ffn"};
const char *const mt_em_act_names[MT_EM_ACT_COUNT] = {"sigmoid", "tanh"};
const char *const mt_gmoe_cov_names[MT_GMOE_COV_COUNT] = {"full", "diag"};

int mt_name_index(const char *const *names, size_t count, const char *name)
{
    if (!name) return -1;
    for (size_t i = 0; i < count; i++)
        if (!strcmp(names[i], name)) return (int)i;
    return -1;
}

const char *mt_name_of(const char *const *names, size_t count, int i)
{
    return i >= 0 && (size_t)i < count ? names[i] : "?";
}
