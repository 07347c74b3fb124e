/* A compiled request path: what the daemon would cost per request if its hot path were C.
 *
 * Issue 21's prototype, not a daemon: one ROUTER socket, float32 requests in the daemon's
 * frames (docs/protocol.md), the model set's kN.onnx sessions with the daemon's session
 * options, and no governor, platform or validation beyond what a reply needs. The header is
 * read by a scanner for the fields of the common case (id, dtype, shape, groups), not a JSON
 * parser: a real compiled path would need one. Built and timed by bench/hotpath.py.
 *
 *   hotpath serve ENDPOINT MODEL_DIR THREADS     answer requests as the daemon does
 *   hotpath echo ENDPOINT HEADER_BYTES BODY_BYTES answer every request with fixed frames
 *   hotpath ping ENDPOINT N HEADER BODY_BYTES     a C DEALER: N round trips, p50/p90 in µs
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>
#include <onnxruntime_c_api.h>

#define MAX_LEVELS 16
#define MAX_PARTS 5

static const OrtApi *ort;

static void die(const char *what, const char *why) {
    fprintf(stderr, "hotpath: %s: %s\n", what, why);
    exit(1);
}

static void check(OrtStatus *st, const char *what) {
    if (st) die(what, ort->GetErrorMessage(st));
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* The value of "key" in a flat JSON object: its first byte, or NULL. */
static const char *field(const char *js, size_t n, const char *key) {
    size_t kl = strlen(key);
    for (const char *p = js; p + kl + 2 < js + n; p++) {
        if (p[0] == '"' && !memcmp(p + 1, key, kl) && p[kl + 1] == '"') {
            p += kl + 2;
            while (p < js + n && (*p == ' ' || *p == ':')) p++;
            return p < js + n ? p : NULL;
        }
    }
    return NULL;
}

/* The raw JSON token at v (a string with its quotes, or a scalar), copied into out. */
static size_t token(const char *v, const char *end, char *out, size_t cap) {
    const char *p = v;
    if (*p == '"') {
        for (p++; p < end && *p != '"'; p++)
            if (*p == '\\') p++;
        p++;
    } else {
        while (p < end && *p != ',' && *p != '}' && *p != ' ') p++;
    }
    size_t len = (size_t)(p - v) < cap - 1 ? (size_t)(p - v) : cap - 1;
    memcpy(out, v, len);
    out[len] = 0;
    return len;
}

static int recv_parts(void *s, zmq_msg_t *parts, int *n) {
    int more = 1;
    *n = 0;
    while (more) {
        zmq_msg_t *m = &parts[*n < MAX_PARTS ? *n : MAX_PARTS - 1];
        if (*n >= MAX_PARTS) zmq_msg_close(m);
        zmq_msg_init(m);
        if (zmq_msg_recv(m, s, 0) < 0) return -1;
        more = zmq_msg_more(m);
        if (*n < MAX_PARTS) (*n)++;
    }
    return 0;
}

static void serve(const char *ep, const char *dir, int threads) {
    OrtEnv *env;
    OrtSessionOptions *so;
    OrtSession *sess[MAX_LEVELS];
    OrtMemoryInfo *mem;
    char path[4096];
    int levels = 0;
    check(ort->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "hotpath", &env), "CreateEnv");
    check(ort->CreateSessionOptions(&so), "CreateSessionOptions");
    check(ort->SetIntraOpNumThreads(so, threads), "SetIntraOpNumThreads");
    check(ort->SetInterOpNumThreads(so, 1), "SetInterOpNumThreads");
    check(ort->AddSessionConfigEntry(so, "session.intra_op.allow_spinning", "1"), "allow_spinning");
    check(ort->AddSessionConfigEntry(so, "session.force_spinning_stop", "1"), "force_spinning_stop");
    check(ort->SetSessionGraphOptimizationLevel(so, ORT_ENABLE_ALL), "SetSessionGraphOptimizationLevel");
    for (; levels < MAX_LEVELS; levels++) {
        snprintf(path, sizeof path, "%s/k%d.onnx", dir, levels + 1);
        FILE *f = fopen(path, "rb");
        if (!f) break;
        fclose(f);
        check(ort->CreateSession(env, path, so, &sess[levels]), path);
    }
    if (!levels) die(dir, "no k1.onnx");
    check(ort->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &mem), "CreateCpuMemoryInfo");

    void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(s, ep)) die(ep, zmq_strerror(errno));
    fprintf(stderr, "hotpath: serving %d levels on %s with %d thread(s)\n", levels, ep, threads);
    const char *in_names[] = {"input"}, *out_names[] = {"logits"};
    zmq_msg_t parts[MAX_PARTS];
    char id[300], reply[8192], err[512];
    for (;;) {
        int n;
        if (recv_parts(s, parts, &n)) die("recv", zmq_strerror(errno));
        int delim = n == 4 && zmq_msg_size(&parts[1]) == 0, h = 1 + delim;
        strcpy(id, "null");
        const char *why = NULL;
        int64_t shape[4] = {0};
        int k = 1;
        if (n != h + 2) why = "bad_frames";
        const char *js = why ? NULL : zmq_msg_data(&parts[h]), *end = js + (why ? 0 : zmq_msg_size(&parts[h]));
        if (!why) {
            const char *v = field(js, end - js, "id"), *d = field(js, end - js, "dtype"),
                       *sh = field(js, end - js, "shape"), *g = field(js, end - js, "groups");
            if (v) token(v, end, id, sizeof id);
            if (!d || strncmp(d, "\"float32\"", 9)) why = "bad_dtype";
            else if (!sh || *sh != '[') why = "bad_shape";
            else {
                char *q = (char *)sh + 1;
                for (int i = 0; i < 4; i++) {
                    shape[i] = strtoll(q, &q, 10);
                    while (*q == ' ' || *q == ',') q++;
                }
                if (shape[0] < 1 || (size_t)(shape[0] * shape[1] * shape[2] * shape[3] * 4) != zmq_msg_size(&parts[h + 1]))
                    why = "bad_size";
            }
            if (g) k = atoi(g);
            if (!why && (k < 1 || k > levels)) why = "bad_groups";
        }
        int len;
        OrtValue *x = NULL, *y = NULL;
        double t0 = now_us(), t1 = t0;
        if (!why) {
            OrtStatus *st = ort->CreateTensorWithDataAsOrtValue(mem, zmq_msg_data(&parts[h + 1]),
                zmq_msg_size(&parts[h + 1]), shape, 4, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &x);
            if (!st) st = ort->Run(sess[k - 1], NULL, in_names, (const OrtValue *const *)&x, 1, out_names, 1, &y);
            t1 = now_us();
            if (st) {
                snprintf(err, sizeof err, "%s", ort->GetErrorMessage(st));
                ort->ReleaseStatus(st);
                why = "internal";
            }
        }
        zmq_send(s, zmq_msg_data(&parts[0]), zmq_msg_size(&parts[0]), ZMQ_SNDMORE);
        if (delim) zmq_send(s, "", 0, ZMQ_SNDMORE);
        if (why) {
            len = snprintf(reply, sizeof reply, "{\"id\":%s,\"ok\":false,\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}",
                           id, why, strcmp(why, "internal") ? why : "inference failed");
            zmq_send(s, reply, len, 0);
        } else {
            float *logits;
            OrtTensorTypeAndShapeInfo *info;
            int64_t oshape[2];
            check(ort->GetTensorMutableData(y, (void **)&logits), "GetTensorMutableData");
            check(ort->GetTensorTypeAndShape(y, &info), "GetTensorTypeAndShape");
            check(ort->GetDimensions(info, oshape, 2), "GetDimensions");
            ort->ReleaseTensorTypeAndShapeInfo(info);
            len = snprintf(reply, sizeof reply, "{\"id\":%s,\"ok\":true,\"labels\":[", id);
            for (int64_t i = 0; i < oshape[0]; i++) {
                int best = 0;
                for (int c = 1; c < oshape[1]; c++)
                    if (logits[i * oshape[1] + c] > logits[i * oshape[1] + best]) best = c;
                len += snprintf(reply + len, sizeof reply - len, "%s%d", i ? "," : "", best);
            }
            len += snprintf(reply + len, sizeof reply - len,
                            "],\"config\":{\"groups\":%d,\"target\":\"cpu\",\"freq_khz\":null},\"latency_ms\":%.4f,"
                            "\"energy_mj\":null}", k, (t1 - t0) / 1e3);
            zmq_send(s, reply, len, ZMQ_SNDMORE);
            zmq_send(s, logits, oshape[0] * oshape[1] * sizeof(float), 0);
        }
        if (x) ort->ReleaseValue(x);
        if (y) ort->ReleaseValue(y);
        for (int i = 0; i < n; i++) zmq_msg_close(&parts[i]);
    }
}

static void echo(const char *ep, size_t hlen, size_t blen) {
    void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_ROUTER);
    char *head = malloc(hlen), *body = calloc(1, blen);
    memset(head, ' ', hlen);
    if (zmq_bind(s, ep)) die(ep, zmq_strerror(errno));
    zmq_msg_t parts[MAX_PARTS];
    for (;;) {
        int n;
        if (recv_parts(s, parts, &n)) die("recv", zmq_strerror(errno));
        zmq_send(s, zmq_msg_data(&parts[0]), zmq_msg_size(&parts[0]), ZMQ_SNDMORE);
        zmq_send(s, head, hlen, ZMQ_SNDMORE);
        zmq_send(s, body, blen, 0);
        for (int i = 0; i < n; i++) zmq_msg_close(&parts[i]);
    }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void ping(const char *ep, int n, const char *head, size_t blen) {
    void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_DEALER);
    char *body = calloc(1, blen);
    double *rt = malloc(sizeof(double) * n);
    zmq_msg_t parts[MAX_PARTS];
    if (zmq_connect(s, ep)) die(ep, zmq_strerror(errno));
    for (int i = -10; i < n; i++) {
        double t0 = now_us();
        zmq_send(s, head, strlen(head), ZMQ_SNDMORE);
        zmq_send(s, body, blen, 0);
        int m;
        if (recv_parts(s, parts, &m)) die("recv", zmq_strerror(errno));
        if (i >= 0) rt[i] = now_us() - t0;
        for (int j = 0; j < m; j++) zmq_msg_close(&parts[j]);
    }
    qsort(rt, n, sizeof(double), cmp);
    printf("{\"p50_us\": %.2f, \"p90_us\": %.2f, \"n\": %d}\n", rt[n / 2], rt[n * 9 / 10], n);
}

int main(int argc, char **argv) {
    const char *usage = "usage: hotpath serve ENDPOINT MODEL_DIR THREADS | echo ENDPOINT HEADER_BYTES BODY_BYTES"
                        " | ping ENDPOINT N HEADER BODY_BYTES\n";
    if (argc < 2) return fputs(usage, stderr), 2;
    if (!strcmp(argv[1], "serve") && argc == 5) {
        /* The newest API this header and the loaded library both have; every call used here is in v11 (onnxruntime 1.11). */
        for (int v = ORT_API_VERSION; v >= 11 && !ort; v--) ort = OrtGetApiBase()->GetApi(v);
        if (!ort) die("onnxruntime", "the library offers no C API version >= 11");
        serve(argv[2], argv[3], atoi(argv[4]));
    } else if (!strcmp(argv[1], "echo") && argc == 5) {
        echo(argv[2], strtoul(argv[3], NULL, 10), strtoul(argv[4], NULL, 10));
    } else if (!strcmp(argv[1], "ping") && argc == 6) {
        ping(argv[2], atoi(argv[3]), argv[4], strtoul(argv[5], NULL, 10));
    } else {
        return fputs(usage, stderr), 2;
    }
    return 0;
}
