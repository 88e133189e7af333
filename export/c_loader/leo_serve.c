/* leo_serve: load a SavedModel with TensorFlow's C API, as TF Serving does, and answer
 * requests read from stdin, one per line, until the end of the input.
 *
 *   leo_serve [--intra_op_threads=N] [--inter_op_threads=N] <saved_model_dir>
 *
 * The model is loaded once with TF_LoadSessionFromSavedModel and the tag "serve".
 * The signatures (their input and output keys and the graph tensors behind them)
 * are read from the MetaGraphDef that the loader returns: the program decodes the
 * protobuf wire format of the few messages it needs itself (no libprotobuf; see
 * pb_* below), so any export works without a sidecar file.
 *
 * Requests (one line each; paths may not contain spaces):
 *   signatures                          list every signature, its inputs and outputs
 *   run <signature> [-o <out>,<out>] <input>=<file> ...
 *                                       run a signature; each <file> holds one
 *                                       serialized tensorflow.TensorProto (what
 *                                       tf.make_tensor_proto(x).SerializeToString()
 *                                       writes, and what a PredictRequest carries);
 *                                       -o fetches only the named outputs
 *   time <repeats> <signature> [-o ...] <input>=<file> ...
 *                                       the same <repeats> times; prints each call's time
 *   warmup [<file>]                     replay every PredictionLog record of a TF Serving
 *                                       warmup file (default: the model's
 *                                       assets.extra/tf_serving_warmup_requests)
 *   quit
 *
 * Responses (stdout, flushed after each; one line unless said otherwise):
 *   ok <signature> <number of outputs> <microseconds>     then one line per output:
 *   <output key> <dtype> <rank> <d_0> ... <d_rank-1> <values ...>
 *   error <CODE> <message>                                e.g. error INVALID_ARGUMENT ...
 * <microseconds> is the time from the request's TensorProtos (in memory) to the
 * output tensors: building the input tensors and TF_SessionRun. Floats are printed
 * with 9 significant digits (float32 round-trips exactly), strings as bytes with
 * \xHH escapes for anything but printable ASCII other than space and backslash.
 * `time` answers "times <signature> <repeats>" and then one line of microseconds.
 * `warmup` answers "record <i> <signature>" and a response for each record, an error
 * line if the file is missing or damaged, then "warmup <records replayed>". `signatures` answers "signature <name>", then
 * "input <key> <tensor> <dtype>" and "output <key> <tensor> <dtype>" lines, then
 * "end". A bad request is answered with an error, and the next request is read:
 * only a model that cannot be loaded ends the program (exit status 1).
 */

#define _POSIX_C_SOURCE 200809L

#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tensorflow/c/c_api.h"

/* ---------------------------------------------------------------------------------
 * The TensorFlow C API, bound at start-up: dlopen of the wheel's libtensorflow_cc.so.2
 * (which loads libtensorflow_framework.so.2 beside it) and dlsym of each function, called
 * as tf.<name> for TF_<name>. Linking against the 1 GB library instead takes GNU ld 37 s
 * on 2 cores (gold 10 s); this way the build is a one-second compile. build.sh sets
 * TENSORFLOW_DIR to the wheel's folder. */

#ifndef TENSORFLOW_DIR
#define TENSORFLOW_DIR "."
#endif

#define TF_API(X) X(AllocateTensor) X(CloseSession) X(DataTypeSize) X(DeleteBuffer) \
   X(DeleteGraph) X(DeleteSession) X(DeleteSessionOptions) X(DeleteStatus) X(DeleteTensor) \
   X(Dim) X(GetCode) X(GraphOperationByName) X(LoadSessionFromSavedModel) X(Message) \
   X(NewBuffer) X(NewGraph) X(NewSessionOptions) X(NewStatus) X(NumDims) X(SessionRun) \
   X(SetConfig) X(StringCopy) X(StringDealloc) X(StringGetDataPointer) X(StringGetSize) \
   X(StringInit) X(TensorData) X(TensorElementCount) X(TensorType)

static struct {
#define TF_POINTER(name) __typeof__(TF_##name) *name;
  TF_API(TF_POINTER)
#undef TF_POINTER
} tf;

/* 1 once every function is bound; else prints why to stderr and returns 0. */
static int bind_tensorflow(void) {
  const char *path = TENSORFLOW_DIR "/libtensorflow_cc.so.2";
  void *library = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
  if (!library) {
    fprintf(stderr, "leo_serve: cannot load %s (%s); rebuild with export/c_loader/build.sh "
            "for the tensorflow wheel installed now\n", path, dlerror());
    return 0;
  }
#define TF_BIND(name)                                                   \
  if (!(*(void **)&tf.name = dlsym(library, "TF_" #name))) {            \
    fprintf(stderr, "leo_serve: %s has no TF_%s\n", path, #name);      \
    return 0;                                                           \
  }
  TF_API(TF_BIND)
#undef TF_BIND
  return 1;
}

#define MAX_TOKENS 64
#define MESSAGE_SIZE 2048

/* ---------------------------------------------------------------------------------
 * Protobuf wire format: just enough to walk messages field by field. */

typedef struct {
  const uint8_t *p, *end;
} pb_reader;

typedef struct {
  uint32_t field, wire; /* wire 0: varint, 1: fixed64, 2: bytes, 5: fixed32 */
  uint64_t varint;      /* wire 0 */
  pb_reader bytes;      /* wire 1, 2, 5: the field's bytes */
} pb_field;

static int pb_read_varint(pb_reader *r, uint64_t *value) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (r->p >= r->end) return 0;
    uint8_t byte = *r->p++;
    v |= (uint64_t)(byte & 0x7f) << shift;
    if (!(byte & 0x80)) {
      *value = v;
      return 1;
    }
  }
  return 0;
}

/* The next field of the message: 1, or 0 at its end, or -1 if malformed. */
static int pb_next(pb_reader *r, pb_field *f) {
  if (r->p >= r->end) return 0;
  uint64_t key, size;
  if (!pb_read_varint(r, &key)) return -1;
  f->field = (uint32_t)(key >> 3);
  f->wire = (uint32_t)(key & 7);
  switch (f->wire) {
    case 0:
      return pb_read_varint(r, &f->varint) ? 1 : -1;
    case 1:
    case 5:
      size = f->wire == 1 ? 8 : 4;
      break;
    case 2:
      if (!pb_read_varint(r, &size)) return -1;
      break;
    default: /* groups are not used by these messages */
      return -1;
  }
  if (size > (uint64_t)(r->end - r->p)) return -1;
  f->bytes.p = r->p;
  f->bytes.end = r->p + size;
  r->p += size;
  return 1;
}

static pb_reader pb_of(const void *data, size_t size) {
  pb_reader r = {(const uint8_t *)data, (const uint8_t *)data + size};
  return r;
}

static char *pb_strdup(pb_reader b) {
  size_t n = (size_t)(b.end - b.p);
  char *s = malloc(n + 1);
  memcpy(s, b.p, n);
  s[n] = '\0';
  return s;
}

/* ---------------------------------------------------------------------------------
 * Errors: a code (TF_Code) and a message, as TF_Status carries them. */

typedef struct {
  TF_Code code;
  char message[MESSAGE_SIZE];
} error;

/* Sets *e; returns 0, so that `return fail(...)` reports failure. */
static int fail(error *e, TF_Code code, const char *format, ...) {
  va_list args;
  va_start(args, format);
  e->code = code;
  vsnprintf(e->message, sizeof e->message, format, args);
  va_end(args);
  return 0;
}

static const char *code_name(TF_Code code) {
  static const char *names[] = {
      "OK",           "CANCELLED",         "UNKNOWN",   "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED", "NOT_FOUND",    "ALREADY_EXISTS", "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL",         "UNAVAILABLE", "DATA_LOSS",
      "UNAUTHENTICATED"};
  return (unsigned)code < sizeof names / sizeof names[0] ? names[code] : "UNKNOWN";
}

static void print_error(const error *e) {
  printf("error %s ", code_name(e->code));
  for (const char *c = e->message; *c; c++) putchar(*c == '\n' || *c == '\r' ? ' ' : *c);
  putchar('\n');
}

/* ---------------------------------------------------------------------------------
 * Signatures, from the MetaGraphDef's signature_def map. */

typedef struct {
  char *key;    /* the signature's name for it ("support") */
  char *tensor; /* the graph tensor ("serving_default_support:0") */
  int dtype;    /* TF_DataType */
  TF_Output output;
} tensor_info;

typedef struct {
  char *name;
  int num_inputs, num_outputs;
  tensor_info *inputs, *outputs;
} signature;

typedef struct {
  TF_Graph *graph;
  TF_Session *session;
  int num_signatures;
  signature *signatures;
} model;

/* TensorInfo {name = 1, dtype = 2}, inside a map entry {key = 1, value = 2}. */
static int parse_tensor_info(pb_reader entry, tensor_info *info) {
  pb_field f, g;
  int r;
  info->key = info->tensor = NULL;
  info->dtype = 0;
  while ((r = pb_next(&entry, &f)) == 1) {
    if (f.field == 1 && f.wire == 2) {
      free(info->key);
      info->key = pb_strdup(f.bytes);
    } else if (f.field == 2 && f.wire == 2) {
      pb_reader value = f.bytes;
      while ((r = pb_next(&value, &g)) == 1) {
        if (g.field == 1 && g.wire == 2) {
          free(info->tensor);
          info->tensor = pb_strdup(g.bytes);
        } else if (g.field == 2 && g.wire == 0) {
          info->dtype = (int)g.varint;
        }
      }
      if (r < 0) return 0;
    }
  }
  return r == 0 && info->key && info->tensor; /* sparse or composite tensors: unsupported */
}

static int cmp_info(const void *a, const void *b) {
  return strcmp(((const tensor_info *)a)->key, ((const tensor_info *)b)->key);
}

/* SignatureDef {inputs = 1, outputs = 2}, inside a map entry {key = 1, value = 2}. */
static int parse_signature(pb_reader entry, signature *s) {
  pb_field f, g;
  int r;
  memset(s, 0, sizeof *s);
  while ((r = pb_next(&entry, &f)) == 1) {
    if (f.field == 1 && f.wire == 2) {
      free(s->name);
      s->name = pb_strdup(f.bytes);
    } else if (f.field == 2 && f.wire == 2) {
      pb_reader def = f.bytes;
      while ((r = pb_next(&def, &g)) == 1) {
        if ((g.field != 1 && g.field != 2) || g.wire != 2) continue;
        int *count = g.field == 1 ? &s->num_inputs : &s->num_outputs;
        tensor_info **infos = g.field == 1 ? &s->inputs : &s->outputs;
        *infos = realloc(*infos, (size_t)(*count + 1) * sizeof **infos);
        if (!parse_tensor_info(g.bytes, &(*infos)[*count])) return 0;
        (*count)++;
      }
      if (r < 0) return 0;
    }
  }
  if (r < 0 || !s->name) return 0;
  qsort(s->inputs, (size_t)s->num_inputs, sizeof *s->inputs, cmp_info);
  qsort(s->outputs, (size_t)s->num_outputs, sizeof *s->outputs, cmp_info);
  return 1;
}

/* "op_name:index" -> the graph's TF_Output. */
static int find_output(TF_Graph *graph, tensor_info *info) {
  char *name = strdup(info->tensor);
  char *colon = strrchr(name, ':');
  int index = 0;
  if (colon) {
    *colon = '\0';
    index = atoi(colon + 1);
  }
  info->output.oper = tf.GraphOperationByName(graph, name);
  info->output.index = index;
  free(name);
  return info->output.oper != NULL;
}

/* MetaGraphDef {signature_def = 5}: every signature, its tensors found in the graph. */
static int read_signatures(model *m, const TF_Buffer *meta_graph_def, error *e) {
  pb_reader r = pb_of(meta_graph_def->data, meta_graph_def->length);
  pb_field f;
  int status;
  while ((status = pb_next(&r, &f)) == 1) {
    if (f.field != 5 || f.wire != 2) continue;
    m->signatures = realloc(m->signatures, (size_t)(m->num_signatures + 1) * sizeof(signature));
    signature *s = &m->signatures[m->num_signatures];
    if (!parse_signature(f.bytes, s))
      return fail(e, TF_DATA_LOSS, "cannot read a signature of the MetaGraphDef");
    m->num_signatures++;
    for (int i = 0; i < s->num_inputs + s->num_outputs; i++) {
      tensor_info *info = i < s->num_inputs ? &s->inputs[i] : &s->outputs[i - s->num_inputs];
      if (!find_output(m->graph, info))
        return fail(e, TF_NOT_FOUND, "signature %s names tensor %s, which is not in the graph",
                    s->name, info->tensor);
    }
  }
  if (status < 0) return fail(e, TF_DATA_LOSS, "the MetaGraphDef is malformed");
  return 1;
}

static signature *find_signature(model *m, const char *name) {
  for (int i = 0; i < m->num_signatures; i++)
    if (strcmp(m->signatures[i].name, name) == 0) return &m->signatures[i];
  return NULL;
}

static const char *dtype_name(int dtype) {
  switch (dtype) {
    case TF_FLOAT: return "float32";
    case TF_DOUBLE: return "float64";
    case TF_INT32: return "int32";
    case TF_UINT8: return "uint8";
    case TF_INT16: return "int16";
    case TF_INT8: return "int8";
    case TF_STRING: return "string";
    case TF_INT64: return "int64";
    case TF_BOOL: return "bool";
    default: return "other";
  }
}

static void list_signatures(const model *m) {
  for (int i = 0; i < m->num_signatures; i++) {
    const signature *s = &m->signatures[i];
    printf("signature %s\n", s->name);
    for (int j = 0; j < s->num_inputs; j++)
      printf("input %s %s %s\n", s->inputs[j].key, s->inputs[j].tensor,
             dtype_name(s->inputs[j].dtype));
    for (int j = 0; j < s->num_outputs; j++)
      printf("output %s %s %s\n", s->outputs[j].key, s->outputs[j].tensor,
             dtype_name(s->outputs[j].dtype));
  }
  printf("end\n");
}

/* ---------------------------------------------------------------------------------
 * TensorProto -> TF_Tensor.
 * TensorProto {dtype = 1, tensor_shape = 2 {dim = 2 {size = 1}}, tensor_content = 4,
 * float_val = 5, double_val = 6, int_val = 7, string_val = 8, int64_val = 10,
 * bool_val = 11}. As TensorFlow's own reader: tensor_content holds the values in
 * little-endian order; otherwise the typed fields (packed or not) do, and fewer
 * values than elements repeat the last one. */

#define MAX_RANK 16

static void free_tensor(TF_Tensor *t) {
  if (!t) return;
  if (tf.TensorType(t) == TF_STRING) {
    TF_TString *s = tf.TensorData(t);
    for (int64_t i = 0, n = tf.TensorElementCount(t); i < n; i++) tf.StringDealloc(&s[i]);
  }
  tf.DeleteTensor(t);
}

/* Stores value number i (of a typed field) into data, as dtype. */
static void store(void *data, int dtype, int64_t i, uint64_t bits) {
  switch (dtype) {
    case TF_FLOAT: { uint32_t v = (uint32_t)bits; memcpy((char *)data + 4 * i, &v, 4); break; }
    case TF_DOUBLE: memcpy((char *)data + 8 * i, &bits, 8); break;
    case TF_INT32: ((int32_t *)data)[i] = (int32_t)bits; break;
    case TF_INT16: ((int16_t *)data)[i] = (int16_t)bits; break;
    case TF_INT8: ((int8_t *)data)[i] = (int8_t)bits; break;
    case TF_UINT8: ((uint8_t *)data)[i] = (uint8_t)bits; break;
    case TF_INT64: ((int64_t *)data)[i] = (int64_t)bits; break;
    case TF_BOOL: ((uint8_t *)data)[i] = bits != 0; break;
  }
}

/* The typed field that holds values of dtype, and its element's wire type. */
static int value_field(int dtype, uint32_t *wire) {
  switch (dtype) {
    case TF_FLOAT: *wire = 5; return 5;
    case TF_DOUBLE: *wire = 1; return 6;
    case TF_INT32: case TF_INT16: case TF_INT8: case TF_UINT8: *wire = 0; return 7;
    case TF_STRING: *wire = 2; return 8;
    case TF_INT64: *wire = 0; return 10;
    case TF_BOOL: *wire = 0; return 11;
    default: return 0;
  }
}

static uint64_t fixed_bits(const uint8_t *p, int size) {
  uint64_t v = 0;
  for (int i = size - 1; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static TF_Tensor *tensor_from_proto(pb_reader proto, const char *key, error *e) {
  int dtype = 0, rank = 0, r;
  int64_t dims[MAX_RANK], count = 1;
  pb_reader content = {NULL, NULL};
  pb_field f, g, h;
  pb_reader scan = proto;
  while ((r = pb_next(&scan, &f)) == 1) {
    if (f.field == 1 && f.wire == 0) {
      dtype = (int)f.varint;
    } else if (f.field == 2 && f.wire == 2) {
      pb_reader shape = f.bytes;
      rank = 0;
      while ((r = pb_next(&shape, &g)) == 1) {
        if (g.field == 3 && g.wire == 0 && g.varint) {
          fail(e, TF_INVALID_ARGUMENT, "input %s has an unknown rank; send its shape", key);
          return NULL;
        }
        if (g.field != 2 || g.wire != 2) continue;
        if (rank == MAX_RANK) {
          fail(e, TF_INVALID_ARGUMENT, "input %s has more than 16 dimensions", key);
          return NULL;
        }
        int64_t size = 0;
        pb_reader dim = g.bytes;
        while ((r = pb_next(&dim, &h)) == 1)
          if (h.field == 1 && h.wire == 0) size = (int64_t)h.varint;
        if (r < 0) break;
        if (size < 0) {
          fail(e, TF_INVALID_ARGUMENT, "input %s has a dimension of unknown size; send %s",
               key, "every size");
          return NULL;
        }
        dims[rank++] = size;
      }
      if (r < 0) break;
    } else if (f.field == 4 && f.wire == 2) {
      content = f.bytes;
    }
  }
  if (r < 0) {
    fail(e, TF_INVALID_ARGUMENT, "input %s is not a readable TensorProto", key);
    return NULL;
  }
  uint32_t wire = 0;
  int field = value_field(dtype, &wire);
  if (!field) {
    fail(e, TF_UNIMPLEMENTED, "input %s has dtype %s, which this loader does not read",
         key, dtype_name(dtype));
    return NULL;
  }
  for (int i = 0; i < rank; i++) {
    if (dims[i] && count > INT64_MAX / dims[i]) {
      fail(e, TF_INVALID_ARGUMENT, "input %s has too many elements", key);
      return NULL;
    }
    count *= dims[i];
  }
  size_t element = dtype == TF_STRING ? sizeof(TF_TString) : tf.DataTypeSize((TF_DataType)dtype);
  if (count > (int64_t)(SIZE_MAX / 2 / element)) {
    fail(e, TF_INVALID_ARGUMENT, "input %s has too many elements", key);
    return NULL;
  }
  TF_Tensor *t = tf.AllocateTensor((TF_DataType)dtype, dims, rank, (size_t)count * element);
  if (!t) {
    fail(e, TF_RESOURCE_EXHAUSTED, "cannot allocate input %s", key);
    return NULL;
  }
  void *data = tf.TensorData(t);
  if (dtype == TF_STRING) {
    for (int64_t i = 0; i < count; i++) tf.StringInit(&((TF_TString *)data)[i]);
  } else {
    memset(data, 0, (size_t)count * element);
  }
  if (content.p && dtype != TF_STRING) {
    if ((size_t)(content.end - content.p) != (size_t)count * element) {
      free_tensor(t);
      fail(e, TF_INVALID_ARGUMENT, "input %s: tensor_content does not hold one value per "
           "element of its shape", key);
      return NULL;
    }
    memcpy(data, content.p, (size_t)count * element);
    return t;
  }
  /* The typed field, packed (one bytes field of many values) or one field per value. */
  int64_t n = 0;
  uint64_t last = 0;
  TF_TString *strings = data;
  scan = proto;
  while (pb_next(&scan, &f) == 1) {
    if ((int)f.field != field) continue;
    if (f.wire == wire && wire != 2) {
      uint64_t bits = wire == 0 ? f.varint : fixed_bits(f.bytes.p, wire == 5 ? 4 : 8);
      if (n < count) store(data, dtype, n, bits);
      last = bits;
      n++;
    } else if (f.wire == 2 && wire == 2) {
      if (n < count) tf.StringCopy(&strings[n], (const char *)f.bytes.p,
                                   (size_t)(f.bytes.end - f.bytes.p));
      n++;
    } else if (f.wire == 2) { /* packed */
      pb_reader packed = f.bytes;
      while (packed.p < packed.end) {
        uint64_t bits;
        if (wire == 0) {
          if (!pb_read_varint(&packed, &bits)) break;
        } else {
          int size = wire == 5 ? 4 : 8;
          if (packed.end - packed.p < size) break;
          bits = fixed_bits(packed.p, size);
          packed.p += size;
        }
        if (n < count) store(data, dtype, n, bits);
        last = bits;
        n++;
      }
    }
  }
  if (n > count) {
    free_tensor(t);
    fail(e, TF_INVALID_ARGUMENT, "input %s holds more values than its shape has elements",
         key);
    return NULL;
  }
  for (int64_t i = n; n > 0 && i < count; i++) { /* the last value repeated */
    if (dtype == TF_STRING)
      tf.StringCopy(&strings[i], tf.StringGetDataPointer(&strings[n - 1]),
                    tf.StringGetSize(&strings[n - 1]));
    else
      store(data, dtype, i, last);
  }
  return t;
}

/* ---------------------------------------------------------------------------------
 * One request: a signature, its inputs as TensorProto bytes, the outputs to fetch. */

typedef struct {
  const char *key;
  pb_reader proto;
} request_input;

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return 1e6 * (double)t.tv_sec + 1e-3 * (double)t.tv_nsec;
}

/* Runs signature s on the inputs; outputs[i] receives the value of fetch[i].
 * Every input of the signature must be given once, and nothing else. */
static int run_signature(model *m, signature *s, request_input *inputs, int num_inputs,
                         tensor_info **fetch, int num_fetch, TF_Tensor **outputs,
                         double *micros, error *e) {
  TF_Output feeds[MAX_TOKENS], fetches[MAX_TOKENS];
  TF_Tensor *values[MAX_TOKENS] = {0};
  double start = now_us();
  if (num_inputs != s->num_inputs) {
    char counts[64];
    snprintf(counts, sizeof counts, "%d inputs, got %d", s->num_inputs, num_inputs);
    return fail(e, TF_INVALID_ARGUMENT, "signature %s takes %s", s->name, counts);
  }
  int ok = 1;
  for (int i = 0; i < s->num_inputs && ok; i++) {
    int found = -1;
    for (int j = 0; j < num_inputs; j++)
      if (strcmp(inputs[j].key, s->inputs[i].key) == 0) found = j;
    if (found < 0) {
      ok = fail(e, TF_INVALID_ARGUMENT, "signature %s needs input %s", s->name,
                s->inputs[i].key);
      break;
    }
    feeds[i] = s->inputs[i].output;
    values[i] = tensor_from_proto(inputs[found].proto, inputs[found].key, e);
    ok = values[i] != NULL;
  }
  if (ok) {
    for (int i = 0; i < num_fetch; i++) fetches[i] = fetch[i]->output;
    TF_Status *status = tf.NewStatus();
    tf.SessionRun(m->session, NULL, feeds, values, s->num_inputs, fetches, outputs, num_fetch,
                  NULL, 0, NULL, status);
    if (tf.GetCode(status) != TF_OK) {
      ok = fail(e, tf.GetCode(status), "%s", tf.Message(status));
      for (int i = 0; i < num_fetch; i++) outputs[i] = NULL;
    }
    tf.DeleteStatus(status);
  }
  for (int i = 0; i < s->num_inputs; i++) free_tensor(values[i]);
  *micros = now_us() - start;
  return ok;
}

static void print_string(const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c > ' ' && c < 127 && c != '\\') putchar(c);
    else printf("\\x%02x", c);
  }
}

static void print_tensor(const char *key, TF_Tensor *t) {
  int dtype = tf.TensorType(t), rank = tf.NumDims(t);
  int64_t n = tf.TensorElementCount(t);
  void *data = tf.TensorData(t);
  printf("%s %s %d", key, dtype_name(dtype), rank);
  for (int i = 0; i < rank; i++) printf(" %lld", (long long)tf.Dim(t, i));
  for (int64_t i = 0; i < n; i++) {
    putchar(' ');
    switch (dtype) {
      case TF_FLOAT: printf("%.9g", (double)((float *)data)[i]); break;
      case TF_DOUBLE: printf("%.17g", ((double *)data)[i]); break;
      case TF_INT32: printf("%d", ((int32_t *)data)[i]); break;
      case TF_INT16: printf("%d", ((int16_t *)data)[i]); break;
      case TF_INT8: printf("%d", ((int8_t *)data)[i]); break;
      case TF_UINT8: case TF_BOOL: printf("%u", ((uint8_t *)data)[i]); break;
      case TF_INT64: printf("%lld", (long long)((int64_t *)data)[i]); break;
      case TF_STRING: {
        TF_TString *s = &((TF_TString *)data)[i];
        print_string(tf.StringGetDataPointer(s), tf.StringGetSize(s));
        break;
      }
      default: printf("?");
    }
  }
  putchar('\n');
}

/* The outputs to fetch: the signature's (all, in key order) or those named. */
static int choose_outputs(signature *s, char **names, int num_names, tensor_info **fetch,
                          int *num_fetch, error *e) {
  *num_fetch = 0;
  if (num_names == 0) {
    if (s->num_outputs > MAX_TOKENS)
      return fail(e, TF_UNIMPLEMENTED, "signature %s has too many outputs", s->name);
    for (int i = 0; i < s->num_outputs; i++) fetch[(*num_fetch)++] = &s->outputs[i];
    return 1;
  }
  for (int i = 0; i < num_names && i < MAX_TOKENS; i++) {
    tensor_info *found = NULL;
    for (int j = 0; j < s->num_outputs; j++)
      if (strcmp(s->outputs[j].key, names[i]) == 0) found = &s->outputs[j];
    if (!found)
      return fail(e, TF_INVALID_ARGUMENT, "signature %s has no output %s", s->name, names[i]);
    fetch[(*num_fetch)++] = found;
  }
  return 1;
}

/* Runs a request and prints its response. */
static int respond(model *m, const char *signature_name, request_input *inputs, int num_inputs,
                   char **output_names, int num_output_names) {
  error e;
  signature *s = find_signature(m, signature_name);
  tensor_info *fetch[MAX_TOKENS];
  TF_Tensor *outputs[MAX_TOKENS];
  int num_fetch = 0;
  double micros = 0;
  int ok;
  if (!s)
    ok = fail(&e, TF_INVALID_ARGUMENT, "the model has no signature %s (the command "
              "\"signatures\" lists them)", signature_name);
  else
    ok = choose_outputs(s, output_names, num_output_names, fetch, &num_fetch, &e) &&
         run_signature(m, s, inputs, num_inputs, fetch, num_fetch, outputs, &micros, &e);
  if (!ok) {
    print_error(&e);
    return 0;
  }
  printf("ok %s %d %.1f\n", s->name, num_fetch, micros);
  for (int i = 0; i < num_fetch; i++) {
    print_tensor(fetch[i]->key, outputs[i]);
    free_tensor(outputs[i]);
  }
  return 1;
}

/* ---------------------------------------------------------------------------------
 * Files. */

static char *read_file(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t capacity = 1 << 16, n = 0;
  char *data = malloc(capacity);
  size_t got;
  while ((got = fread(data + n, 1, capacity - n, f)) > 0) {
    n += got;
    if (n == capacity) data = realloc(data, capacity *= 2);
  }
  fclose(f);
  *size = n;
  return data;
}

/* ---------------------------------------------------------------------------------
 * Commands. */

/* "run"/"time": [-o a,b] key=file ... -> inputs (files read into memory). */
static int parse_request(char **tokens, int num_tokens, request_input *inputs, int *num_inputs,
                         char **files, char **output_names, int *num_output_names, error *e) {
  *num_inputs = *num_output_names = 0;
  for (int i = 0; i < num_tokens; i++) {
    if (strcmp(tokens[i], "-o") == 0 && i + 1 < num_tokens) {
      for (char *name = strtok(tokens[++i], ","); name; name = strtok(NULL, ","))
        if (*num_output_names < MAX_TOKENS) output_names[(*num_output_names)++] = name;
      continue;
    }
    char *equals = strchr(tokens[i], '=');
    if (!equals)
      return fail(e, TF_INVALID_ARGUMENT, "expected <input>=<TensorProto file>, got %s",
                  tokens[i]);
    *equals = '\0';
    size_t size;
    char *data = read_file(equals + 1, &size);
    if (!data)
      return fail(e, TF_NOT_FOUND, "cannot read the file of input %s: %s", tokens[i], equals + 1);
    files[*num_inputs] = data;
    inputs[*num_inputs].key = tokens[i];
    inputs[*num_inputs].proto = pb_of(data, size);
    (*num_inputs)++;
  }
  return 1;
}

static void command_run(model *m, char **tokens, int num_tokens, int repeats) {
  request_input inputs[MAX_TOKENS];
  char *files[MAX_TOKENS], *output_names[MAX_TOKENS];
  int num_inputs = 0, num_output_names = 0;
  error e;
  const char *name = tokens[0];
  if (!parse_request(tokens + 1, num_tokens - 1, inputs, &num_inputs, files, output_names,
                     &num_output_names, &e)) {
    print_error(&e);
  } else if (repeats == 0) {
    respond(m, name, inputs, num_inputs, output_names, num_output_names);
  } else {
    signature *s = find_signature(m, name);
    tensor_info *fetch[MAX_TOKENS];
    TF_Tensor *outputs[MAX_TOKENS];
    int num_fetch = 0, ok = s != NULL;
    if (!s) fail(&e, TF_INVALID_ARGUMENT, "the model has no signature %s (the command "
                 "\"signatures\" lists them)", name);
    ok = ok && choose_outputs(s, output_names, num_output_names, fetch, &num_fetch, &e);
    double *micros = calloc((size_t)repeats, sizeof(double));
    for (int i = 0; i < repeats && ok; i++) {
      ok = run_signature(m, s, inputs, num_inputs, fetch, num_fetch, outputs, &micros[i], &e);
      for (int j = 0; j < num_fetch && ok; j++) free_tensor(outputs[j]);
    }
    if (ok) {
      printf("times %s %d\n", name, repeats);
      for (int i = 0; i < repeats; i++) printf(i ? " %.1f" : "%.1f", micros[i]);
      putchar('\n');
    } else {
      print_error(&e);
    }
    free(micros);
  }
  for (int i = 0; i < num_inputs; i++) free(files[i]);
}

/* CRC-32C (Castagnoli), masked as TFRecord files store it. */
static uint32_t masked_crc32c(const uint8_t *p, size_t n) {
  uint32_t crc = 0xffffffffu;
  for (size_t i = 0; i < n; i++) {
    crc ^= p[i];
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
  }
  crc = ~crc;
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

/* PredictionLog {predict_log = 6 {request = 1}}; PredictRequest {model_spec = 1
 * {signature_name = 3}, inputs = 2 (map entries {key = 1, value = 2}), output_filter = 3}. */
static void replay_record(model *m, pb_reader log, int index) {
  pb_field f, g, h;
  pb_reader request = {NULL, NULL};
  while (pb_next(&log, &f) == 1)
    if (f.field == 6 && f.wire == 2)
      while (pb_next(&f.bytes, &g) == 1)
        if (g.field == 1 && g.wire == 2) request = g.bytes;
  char *name = NULL, *output_names[MAX_TOKENS], *keys[MAX_TOKENS];
  request_input inputs[MAX_TOKENS];
  int num_inputs = 0, num_output_names = 0, bad = request.p == NULL;
  while (!bad && pb_next(&request, &f) == 1) {
    if (f.field == 1 && f.wire == 2) {
      while (pb_next(&f.bytes, &g) == 1)
        if (g.field == 3 && g.wire == 2) {
          free(name);
          name = pb_strdup(g.bytes);
        }
    } else if (f.field == 2 && f.wire == 2 && num_inputs < MAX_TOKENS) {
      keys[num_inputs] = NULL;
      inputs[num_inputs].proto.p = NULL;
      while (pb_next(&f.bytes, &h) == 1) {
        if (h.field == 1 && h.wire == 2) {
          free(keys[num_inputs]);
          keys[num_inputs] = pb_strdup(h.bytes);
        }
        if (h.field == 2 && h.wire == 2) inputs[num_inputs].proto = h.bytes;
      }
      inputs[num_inputs].key = keys[num_inputs] ? keys[num_inputs] : "";
      if (!inputs[num_inputs].proto.p) inputs[num_inputs].proto = pb_of("", 0);
      num_inputs++;
    } else if (f.field == 3 && f.wire == 2 && num_output_names < MAX_TOKENS) {
      output_names[num_output_names++] = pb_strdup(f.bytes);
    }
  }
  const char *signature_name = name && *name ? name : "serving_default";
  printf("record %d %s\n", index, signature_name);
  if (bad) {
    error e;
    fail(&e, TF_INVALID_ARGUMENT, "record %d holds no PredictLog request", index);
    print_error(&e);
  } else {
    respond(m, signature_name, inputs, num_inputs, output_names, num_output_names);
  }
  free(name);
  for (int i = 0; i < num_inputs; i++) free(keys[i]);
  for (int i = 0; i < num_output_names; i++) free(output_names[i]);
}

static void command_warmup(model *m, const char *path) {
  size_t size;
  char *data = read_file(path, &size);
  error e;
  if (!data) {
    fail(&e, TF_NOT_FOUND, "cannot read the warmup file %s", path);
    print_error(&e);
    printf("warmup 0\n");
    return;
  }
  const uint8_t *p = (const uint8_t *)data, *end = p + size;
  int records = 0;
  /* TFRecord: uint64 length, uint32 masked CRC of the length, the data, its masked CRC. */
  while (p < end) {
    if (end - p < 12) break;
    uint64_t length = fixed_bits(p, 8);
    if ((uint32_t)fixed_bits(p + 8, 4) != masked_crc32c(p, 8) ||
        length > (uint64_t)(end - p - 16)) break;
    const uint8_t *record = p + 12;
    if ((uint32_t)fixed_bits(record + length, 4) != masked_crc32c(record, length)) break;
    replay_record(m, pb_of(record, length), records++);
    p = record + length + 4;
  }
  if (p < end) {
    fail(&e, TF_DATA_LOSS, "the warmup file %s is damaged after %d records", path, records);
    print_error(&e);
  }
  printf("warmup %d\n", records);
  free(data);
}

static int load(model *m, const char *dir, int intra, int inter, error *e) {
  TF_Status *status = tf.NewStatus();
  TF_SessionOptions *options = tf.NewSessionOptions();
  /* ConfigProto {intra_op_parallelism_threads = 2, inter_op_parallelism_threads = 5} */
  uint8_t config[4] = {0x10, (uint8_t)intra, 0x28, (uint8_t)inter};
  if (intra || inter) {
    tf.SetConfig(options, config, sizeof config, status);
    if (tf.GetCode(status) != TF_OK) return fail(e, tf.GetCode(status), "%s", tf.Message(status));
  }
  const char *tags[] = {"serve"};
  TF_Buffer *meta_graph_def = tf.NewBuffer();
  m->graph = tf.NewGraph();
  m->session = tf.LoadSessionFromSavedModel(options, NULL, dir, tags, 1, m->graph,
                                            meta_graph_def, status);
  int ok = tf.GetCode(status) == TF_OK;
  if (!ok) fail(e, tf.GetCode(status), "cannot load the SavedModel: %s", tf.Message(status));
  ok = ok && read_signatures(m, meta_graph_def, e);
  tf.DeleteBuffer(meta_graph_def);
  tf.DeleteSessionOptions(options);
  tf.DeleteStatus(status);
  return ok;
}

int main(int argc, char **argv) {
  int intra = 0, inter = 0;
  const char *dir = NULL;
  for (int i = 1; i < argc; i++) {
    if (strncmp(argv[i], "--intra_op_threads=", 19) == 0) intra = atoi(argv[i] + 19);
    else if (strncmp(argv[i], "--inter_op_threads=", 19) == 0) inter = atoi(argv[i] + 19);
    else dir = argv[i];
  }
  if (!dir || intra < 0 || intra > 127 || inter < 0 || inter > 127) {
    fprintf(stderr, "usage: %s [--intra_op_threads=N] [--inter_op_threads=N] "
            "<saved_model_dir>   (N in 0..127, 0: TensorFlow's default)\n", argv[0]);
    return 2;
  }
  if (!bind_tensorflow()) return 1;
  model m = {0};
  error e;
  if (!load(&m, dir, intra, inter, &e)) {
    print_error(&e);
    return 1;
  }
  printf("loaded %s %d\n", dir, m.num_signatures);
  fflush(stdout);
  char *line = NULL;
  size_t capacity = 0;
  while (getline(&line, &capacity, stdin) >= 0) {
    char *tokens[MAX_TOKENS + 2];
    int n = 0;
    for (char *t = strtok(line, " \t\r\n"); t && n < MAX_TOKENS + 2; t = strtok(NULL, " \t\r\n"))
      tokens[n++] = t;
    if (n == 0) continue;
    if (n > MAX_TOKENS) {
      fail(&e, TF_INVALID_ARGUMENT, "a request has at most 64 words");
      print_error(&e);
    } else if (strcmp(tokens[0], "quit") == 0) {
      break;
    } else if (strcmp(tokens[0], "signatures") == 0) {
      list_signatures(&m);
    } else if (strcmp(tokens[0], "run") == 0 && n >= 2) {
      command_run(&m, tokens + 1, n - 1, 0);
    } else if (strcmp(tokens[0], "time") == 0 && n >= 3 && atoi(tokens[1]) > 0) {
      command_run(&m, tokens + 2, n - 2, atoi(tokens[1]));
    } else if (strcmp(tokens[0], "warmup") == 0) {
      char path[4096];
      snprintf(path, sizeof path, "%s/assets.extra/tf_serving_warmup_requests", dir);
      command_warmup(&m, n >= 2 ? tokens[1] : path);
    } else {
      fail(&e, TF_INVALID_ARGUMENT, "unknown request %s; send signatures, run, time, warmup "
           "or quit", tokens[0]);
      print_error(&e);
    }
    fflush(stdout);
  }
  free(line);
  TF_Status *status = tf.NewStatus();
  tf.CloseSession(m.session, status);
  tf.DeleteSession(m.session, status);
  tf.DeleteStatus(status);
  tf.DeleteGraph(m.graph);
  return 0;
}
