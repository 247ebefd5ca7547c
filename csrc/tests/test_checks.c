/* The core's argument checks: every size product is checked without wrapping, every failed
 * check names its field (mt_why), and the name tables match the enums.
 *
 * The sizes are those of issue 18's crashes: MoE(3, 1, expert="linear", d_out=2**62) and
 * MoE(1, 2, hidden=2**63 - 1), whose size_t products wrapped to a tiny parameter count so that
 * initialisation wrote past theta. Each must now be MT_EINVAL before anything is allocated. */
#include <float.h>
#include <stdint.h>
#include <string.h>

#include "mt_deep.h"
#include "mt_em.h"
#include "mt_moe.h"
#include "mt_names.h"
#include "mt_optim.h"
#include "mt_size.h"
#include "tests/mt_test.h"

static mt_moe_config base(void)
{
    mt_moe_config c = {.d_in = 3, .n_experts = 2, .hidden = 4, .d_out = 1, .depth = 1,
                       .gate = MT_GATE_SOFTMAX, .expert = MT_EXPERT_FFN,
                       .activation = MT_ACT_RELU, .gate_activation = MT_ACT_IDENTITY,
                       .temperature = 1.0, .bias = 1};
    return c;
}

/* validate fails naming `field` */
static int fails_on(const mt_moe_config *c, const char *field)
{
    mt_why why = {0};
    mt_status st = mt_moe_config_validate(c, &why);
    if (st != MT_EINVAL || !why.field || strcmp(why.field, field) != 0 || !strstr(why.text, field)) {
        fprintf(stderr, "expected a failure naming %s, got status %d, field %s, text '%s'\n",
                field, (int)st, why.field ? why.field : "(none)", why.text);
        return 0;
    }
    return 1;
}

static void test_size_products_never_wrap(void)
{
    mt_moe_config c = base();
    c.expert = MT_EXPERT_LINEAR;
    c.d_in = 3;
    c.n_experts = 1;
    c.d_out = (size_t)1 << 62;
    CHECK(fails_on(&c, "d_out"));
    c.d_out = (size_t)1 << 30; /* each size fine, E d_out d_in = 3 * 2**30 too large */
    CHECK(fails_on(&c, "n_params"));
    c = base();
    c.d_in = 1;
    c.hidden = ((size_t)1 << 63) - 1;
    CHECK(fails_on(&c, "hidden"));
    c.hidden = 40000; /* hidden^2 for depth 2 exceeds the limit */
    c.depth = 2;
    CHECK(fails_on(&c, "n_params"));
    c = base();
    c.n_experts = SIZE_MAX;
    CHECK(fails_on(&c, "n_experts"));
    c = base();
    c.d_in = MT_MAX_SIZE; /* the largest single size that is valid alone */
    c.n_experts = 1;
    c.hidden = 1;
    CHECK(fails_on(&c, "n_params")); /* router + W1 = 2 * MT_MAX_SIZE */
    /* a model at the limit validates; initialising it is not attempted (16 GB) */
    c = base();
    c.expert = MT_EXPERT_LINEAR;
    c.bias = 0;
    c.n_experts = 1;
    c.d_out = 1;
    c.d_in = MT_MAX_SIZE / 2;
    CHECK(mt_moe_config_validate(&c, NULL) == MT_OK);
    /* the workspace's products with n_max: out of memory's range is MT_ENOMEM, not a short
     * buffer */
    mt_moe_workspace *ws = (mt_moe_workspace *)&c;
    mt_moe_config small = base();
    CHECK(mt_moe_workspace_alloc(&ws, &small, SIZE_MAX / 4) == MT_ENOMEM && ws == NULL);
    /* a stack whose layers are each valid but whose total is not */
    mt_deep_config deep = {.n_layers = 2};
    deep.layer[0] = base();
    deep.layer[0].expert = MT_EXPERT_LINEAR;
    deep.layer[0].bias = 0;
    deep.layer[0].n_experts = 1;
    deep.layer[0].d_in = 1;
    deep.layer[0].d_out = MT_MAX_SIZE / 3;
    deep.layer[1] = deep.layer[0];
    deep.layer[1].d_in = MT_MAX_SIZE / 3;
    deep.layer[1].d_out = 2;
    mt_why why = {0};
    CHECK(mt_deep_config_validate(&deep, &why) == MT_EINVAL && !strcmp(why.field, "n_params"));
}

static void test_every_field_is_named(void)
{
    mt_moe_config c = base();
    c.d_in = 0;
    CHECK(fails_on(&c, "d_in"));
    c = base();
    c.gate = MT_GATE_TOPK;
    c.top_k = 3;
    CHECK(fails_on(&c, "top_k"));
    c = base();
    c.gate = MT_GATE_HIERARCHICAL;
    c.groups = 3;
    CHECK(fails_on(&c, "groups"));
    c = base();
    c.temperature = 1e-320; /* subnormal: act(s) / t overflows */
    CHECK(fails_on(&c, "temperature"));
    c.temperature = DBL_MIN;
    CHECK(mt_moe_config_validate(&c, NULL) == MT_OK);
    c = base();
    c.aux_z = NAN;
    CHECK(fails_on(&c, "aux_z"));
    c = base();
    c.expert = MT_EXPERT_LINEAR;
    c.depth = 2;
    CHECK(fails_on(&c, "depth"));

    mt_opt_config o = {.kind = MT_OPT_SGD, .lr = 0.1, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                       .schedule = MT_LR_CONSTANT, .step_size = 1, .gamma = 1.0,
                       .total_steps = 1, .t0 = 1.0};
    mt_why why = {0};
    CHECK(mt_opt_config_validate(&o, &why) == MT_OK);
    o.momentum = NAN; /* unused by SGD, still not a setting */
    CHECK(mt_opt_config_validate(&o, &why) == MT_EINVAL && !strcmp(why.field, "momentum"));
    o.momentum = 0.0;
    o.kind = MT_OPT_ADAM;
    o.beta2 = 1.0;
    CHECK(mt_opt_config_validate(&o, &why) == MT_EINVAL && !strcmp(why.field, "beta2"));
    o.beta2 = 0.999;
    o.schedule = MT_LR_COSINE;
    o.lr_min = 0.5;
    CHECK(mt_opt_config_validate(&o, &why) == MT_EINVAL && !strcmp(why.field, "lr_min"));

    CHECK(mt_em_check_sizes(10, 2, 0, &why) == MT_EINVAL && !strcmp(why.field, "K"));
    CHECK(mt_em_check_sizes(10, MT_EM_MAX_DIM + 1, 2, &why) == MT_EINVAL &&
          !strcmp(why.field, "d"));
    CHECK(mt_em_check_sizes(10, 2, (size_t)1 << 62, &why) == MT_EINVAL);
    CHECK(mt_em_check_sizes(10, 2, 3, &why) == MT_OK);
    mt_em_options eo;
    mt_em_options_default(&eo);
    eo.tol = -1.0;
    CHECK(mt_em_options_validate(&eo, &why) == MT_EINVAL && !strcmp(why.field, "tol"));
}

static void test_name_tables(void)
{
    CHECK(mt_name_index(mt_gate_names, MT_GATE_COUNT, "hierarchical") == MT_GATE_HIERARCHICAL);
    CHECK(mt_name_index(mt_expert_names, MT_EXPERT_COUNT, "linear") == MT_EXPERT_LINEAR);
    CHECK(mt_name_index(mt_act_names, MT_ACT_COUNT, "he8") == MT_ACT_HE8);
    CHECK(mt_name_index(mt_act_names, MT_ACT_COUNT, "leaky_relu") == MT_ACT_LEAKY_RELU);
    CHECK(mt_name_index(mt_opt_names, MT_OPT_COUNT, "nesterov") == MT_OPT_NESTEROV);
    CHECK(mt_name_index(mt_schedule_names, MT_SCHEDULE_COUNT, "inverse_time") == MT_LR_INVTIME);
    CHECK(mt_name_index(mt_input_names, MT_INPUT_COUNT, "grid") == MT_INPUT_GRID);
    CHECK(mt_name_index(mt_em_act_names, MT_EM_ACT_COUNT, "tanh") == MT_EM_TANH);
    CHECK(mt_name_index(mt_gate_names, MT_GATE_COUNT, "bogus") == -1);
    CHECK(mt_name_index(mt_gate_names, MT_GATE_COUNT, NULL) == -1);
    CHECK(!strcmp(mt_name_of(mt_gate_names, MT_GATE_COUNT, 7), "?"));
    size_t a = 0;
    CHECK(!mt_size_mul(&a, SIZE_MAX / 2, 3, SIZE_MAX) && a == SIZE_MAX);
    CHECK(mt_size_mul(&a, 3, 5, 15) && a == 15);
    CHECK(!mt_size_add(&a, SIZE_MAX, 1, SIZE_MAX));
}

int main(void)
{
    test_size_products_never_wrap();
    test_every_field_is_named();
    test_name_tables();
    TEST_MAIN_END();
}
