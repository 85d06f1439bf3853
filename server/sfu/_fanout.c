/* The forwarding loop in C: one upstream packet to every down track, in one call.
 *
 * server/sfu/fanout.py says why this exists and what it keeps equal to the Python path
 * (DownTrack.forward with ForwardingSender.send_now), which stays the reference: every down
 * track this loop cannot serve the common way goes to DownTrack.forward, unchanged.
 *
 * Types (Python classes build on the first three; the state they keep lives here, so the C
 * loop and the Python code read and write the same fields):
 *   Leg              base of DownTrack: the fields forward() reads per packet.
 *   Path             base of ForwardingSender: the path send_now uses (state kept by Python
 *                    code), the socket, remote address and SRTP context the loop sends with,
 *                    and the sender-report counts; the loop sends the reports when due.
 *   StreamNumbering  base of StreamRewriter: its numbering state and numbers().
 *   PacketHistory    rtp_rewrite.PacketHistory's ring, the loop storing (header, shared tail).
 * Functions:
 *   forward(down_tracks, out) -> list of awaitables (packets for aiortc's slower path) or None.
 *   configure(srtp_protect and srtp_protect_rtcp addresses, max SRTP and SRTCP trailers, path
 *             check packets, libsrtp error type).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define SEQ_MOD 65536
#define TS_MOD 4294967296LL
#define BUFFER_SIZE 1500
#define MAX_LATE 1000
#define MAX_TOO_OLD_IN_A_ROW 16

typedef int (*protect_fn)(void *ctx, void *rtp, int *len);

/* Set once by configure(): libsrtp's srtp_protect and srtp_protect_rtcp as pylibsrtp links
 * them, the largest SRTP and SRTCP trailers, the exception type for libsrtp errors and the
 * packets a path checks its pair. */
static protect_fn srtp_protect_fn = NULL;
static protect_fn srtp_protect_rtcp_fn = NULL;
static int max_trailer = 0;
static int max_rtcp_trailer = 0;
static int path_check_packets = 32;
static PyObject *srtp_error = NULL;
/* Loss tests only (tests/support/loss.py): given each datagram, True drops it. */
static PyObject *send_filter = NULL;
static unsigned char srtp_buffer[BUFFER_SIZE];

static PyObject *str_forward, *str_find_path, *str_packet_tail, *str_sendto, *str_closing,
    *str_buffer_size, *str_forwarded_packets, *str_forwarded_bytes;

/* ------------------------------------------------------------------ StreamNumbering */

typedef struct {
    PyObject_HEAD
    PyObject *weakrefs;
    long clock_rate;
    long seq_offset;
    long long ts_offset;
    long last_out_seq;
    long long last_out_ts;
    long last_in_seq; /* valid when has_last_in_seq (None in Python otherwise) */
    long first_in_seq;
    long too_old_in_a_row;
    double last_sent_at; /* valid when has_last_sent_at */
    char has_last_in_seq;
    char has_last_sent_at;
    char new_segment;
} Numbering;

static void numbering_dealloc(Numbering *self) {
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    PyTypeObject *type = Py_TYPE(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type); /* instances of heap types own a reference to their type */
}

static int numbering_traverse(Numbering *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static PyObject *numbering_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Numbering *self = (Numbering *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->new_segment = 1;
    return (PyObject *)self;
}

static PyObject *numbering_get_last_in_seq(Numbering *self, void *closure) {
    if (!self->has_last_in_seq)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->last_in_seq);
}

static int numbering_set_last_in_seq(Numbering *self, PyObject *value, void *closure) {
    if (value == NULL || value == Py_None) {
        self->has_last_in_seq = 0;
        return 0;
    }
    long seq = PyLong_AsLong(value);
    if (seq == -1 && PyErr_Occurred())
        return -1;
    self->last_in_seq = seq;
    self->has_last_in_seq = 1;
    return 0;
}

static PyObject *numbering_get_last_sent_at(Numbering *self, void *closure) {
    if (!self->has_last_sent_at)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(self->last_sent_at);
}

static int numbering_set_last_sent_at(Numbering *self, PyObject *value, void *closure) {
    if (value == NULL || value == Py_None) {
        self->has_last_sent_at = 0;
        return 0;
    }
    double at = PyFloat_AsDouble(value);
    if (at == -1.0 && PyErr_Occurred())
        return -1;
    self->last_sent_at = at;
    self->has_last_sent_at = 1;
    return 0;
}

static inline long seq_diff(long a, long b) {
    long d = (a - b) & 0xFFFF;
    return d >= 0x8000 ? d - SEQ_MOD : d;
}

/* StreamRewriter.numbers() (rtp_rewrite.py) in C, for seq and ts already reduced to 16 and
 * 32 bits: 1 with *out_* set, 0 for None (not placed), -1 error. */
static int numbering_numbers(Numbering *self, long seq, long long ts, double now, long *out_seq,
                             long long *out_ts) {
    for (;;) {
        if (self->new_segment) {
            /* Continue right after the last packet sent; advance the clock by the wall time
             * that passed so the receiver's jitter buffer sees real elapsed time. */
            double elapsed = 0.0;
            if (self->has_last_sent_at && now - self->last_sent_at > 0.0)
                elapsed = now - self->last_sent_at;
            long long ts_step = (long long)(elapsed * (double)self->clock_rate);
            if (ts_step < 1)
                ts_step = 1;
            self->seq_offset = ((self->last_out_seq + 1 - seq) % SEQ_MOD + SEQ_MOD) % SEQ_MOD;
            self->ts_offset = ((self->last_out_ts + ts_step - ts) % TS_MOD + TS_MOD) % TS_MOD;
            self->last_in_seq = seq;
            self->has_last_in_seq = 1;
            self->first_in_seq = seq;
            self->new_segment = 0;
            break;
        }
        if (!self->has_last_in_seq) {
            PyErr_SetString(PyExc_AssertionError, "no upstream sequence in a started segment");
            return -1;
        }
        long delta = (seq - self->last_in_seq) & 0xFFFF;
        if (0 < delta && delta < 0x8000) {
            self->last_in_seq = seq;
        } else if (delta && delta - SEQ_MOD < -MAX_LATE) {
            self->too_old_in_a_row += 1;
            if (self->too_old_in_a_row >= MAX_TOO_OLD_IN_A_ROW) {
                self->too_old_in_a_row = 0;
                self->new_segment = 1;
                continue; /* the publisher's numbering jumped: resync at this packet */
            }
            return 0;
        } else if (seq_diff(seq, self->first_in_seq) < 0) {
            return 0; /* from before this segment began: its number may be taken already */
        }
        if (self->too_old_in_a_row)
            self->too_old_in_a_row = 0;
        break;
    }
    *out_seq = (seq + self->seq_offset) % SEQ_MOD;
    *out_ts = (ts + self->ts_offset) % TS_MOD;
    if (seq == self->last_in_seq) {
        self->last_out_seq = *out_seq;
        self->last_out_ts = *out_ts;
        self->last_sent_at = now;
        self->has_last_sent_at = 1;
    }
    return 1;
}

static PyObject *numbering_numbers_py(Numbering *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 3) {
        PyErr_SetString(PyExc_TypeError, "numbers(seq, ts, now) takes 3 arguments");
        return NULL;
    }
    long seq = PyLong_AsLong(args[0]);
    if (seq == -1 && PyErr_Occurred())
        return NULL;
    long long ts = PyLong_AsLongLong(args[1]);
    if (ts == -1 && PyErr_Occurred())
        return NULL;
    double now = PyFloat_AsDouble(args[2]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    long out_seq;
    long long out_ts;
    int found = numbering_numbers(self, seq & 0xFFFF, ts & (TS_MOD - 1), now, &out_seq, &out_ts);
    if (found < 0)
        return NULL;
    if (!found)
        Py_RETURN_NONE;
    return Py_BuildValue("(lL)", out_seq, out_ts);
}

static PyObject *numbering_restart(Numbering *self, PyObject *unused) {
    self->new_segment = 1;
    Py_RETURN_NONE;
}

static PyMethodDef numbering_methods[] = {
    {"numbers", (PyCFunction)(void (*)(void))numbering_numbers_py, METH_FASTCALL,
     "rewrite() as a plain (sequence number, timestamp) pair: the per-packet path."},
    {"restart", (PyCFunction)numbering_restart, METH_NOARGS,
     "Begin a new segment at the next packet (source change, or resume after mute)."},
    {NULL},
};

static PyMemberDef numbering_members[] = {
    {"clock_rate", T_LONG, offsetof(Numbering, clock_rate), 0, NULL},
    {"_seq_offset", T_LONG, offsetof(Numbering, seq_offset), 0, NULL},
    {"_ts_offset", T_LONGLONG, offsetof(Numbering, ts_offset), 0, NULL},
    {"_last_out_seq", T_LONG, offsetof(Numbering, last_out_seq), 0, NULL},
    {"_last_out_ts", T_LONGLONG, offsetof(Numbering, last_out_ts), 0, NULL},
    {"_first_in_seq", T_LONG, offsetof(Numbering, first_in_seq), 0, NULL},
    {"_too_old_in_a_row", T_LONG, offsetof(Numbering, too_old_in_a_row), 0, NULL},
    {"_new_segment", T_BOOL, offsetof(Numbering, new_segment), 0, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Numbering, weakrefs), READONLY, NULL},
    {NULL},
};

static PyGetSetDef numbering_getset[] = {
    {"_last_in_seq", (getter)numbering_get_last_in_seq, (setter)numbering_set_last_in_seq,
     "newest upstream sequence number of the current segment, or None", NULL},
    {"_last_sent_at", (getter)numbering_get_last_sent_at, (setter)numbering_set_last_sent_at,
     "when the newest packet was placed, or None", NULL},
    {NULL},
};

static PyType_Slot numbering_slots[] = {
    {Py_tp_doc, "StreamRewriter's numbering state and numbers(), in C."},
    {Py_tp_new, numbering_new},
    {Py_tp_dealloc, numbering_dealloc},
    {Py_tp_traverse, numbering_traverse},
    {Py_tp_methods, numbering_methods},
    {Py_tp_members, numbering_members},
    {Py_tp_getset, numbering_getset},
    {0, NULL},
};

static PyType_Spec numbering_spec = {
    "server.sfu._fanout.StreamNumbering", sizeof(Numbering), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, numbering_slots,
};

/* ------------------------------------------------------------------ PacketHistory */

/* A ring of sent packets keyed by downstream sequence number (rtp_rewrite.PacketHistory's
 * contract). The C loop stores a packet as its 12-byte header and the shared tail, and get()
 * gives it back as (header, tail), as DownTrack.forward stores it; put() stores any object. */
typedef struct {
    PyObject_HEAD
    PyObject *weakrefs;
    Py_ssize_t size;
    long *seqs;
    PyObject **items;
    unsigned char (*headers)[12];
    char *is_packet;
} History;

static int history_clear(History *self) {
    for (Py_ssize_t i = 0; i < self->size; i++)
        Py_CLEAR(self->items[i]);
    return 0;
}

static void history_dealloc(History *self) {
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    if (self->items != NULL)
        history_clear(self);
    PyMem_Free(self->seqs);
    PyMem_Free(self->items);
    PyMem_Free(self->headers);
    PyMem_Free(self->is_packet);
    PyTypeObject *type = Py_TYPE(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static int history_traverse(History *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    for (Py_ssize_t i = 0; i < self->size; i++)
        Py_VISIT(self->items[i]);
    return 0;
}

static PyObject *history_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {"size", NULL};
    Py_ssize_t size = 512;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|n", keywords, &size))
        return NULL;
    if (size < 1) {
        PyErr_SetString(PyExc_ValueError, "a packet history holds at least one packet");
        return NULL;
    }
    History *self = (History *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->seqs = PyMem_Malloc(sizeof(long) * (size_t)size);
    self->items = PyMem_Calloc((size_t)size, sizeof(PyObject *));
    self->headers = PyMem_Malloc(12 * (size_t)size);
    self->is_packet = PyMem_Calloc((size_t)size, 1);
    if (!self->seqs || !self->items || !self->headers || !self->is_packet) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->size = size;
    for (Py_ssize_t i = 0; i < size; i++)
        self->seqs[i] = -1;
    return (PyObject *)self;
}

static int history_init(PyObject *self, PyObject *args, PyObject *kwds) {
    return 0; /* tp_new took the size */
}

static inline Py_ssize_t history_slot(History *self, long seq) {
    Py_ssize_t slot = (Py_ssize_t)(seq % (long)self->size);
    return slot < 0 ? slot + self->size : slot;
}

/* The C loop's put: the header and a new reference to the tail it shares. */
static void history_put_packet(History *self, long seq, const unsigned char *header,
                               PyObject *rest) {
    Py_ssize_t slot = history_slot(self, seq);
    self->seqs[slot] = seq;
    memcpy(self->headers[slot], header, 12);
    self->is_packet[slot] = 1;
    Py_XSETREF(self->items[slot], Py_NewRef(rest));
}

static PyObject *history_put(History *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 2) {
        PyErr_SetString(PyExc_TypeError, "put(seq, item) takes 2 arguments");
        return NULL;
    }
    long seq = PyLong_AsLong(args[0]);
    if (seq == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t slot = history_slot(self, seq);
    self->seqs[slot] = seq;
    self->is_packet[slot] = 0;
    Py_XSETREF(self->items[slot], Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

static PyObject *history_get(History *self, PyObject *arg) {
    long seq = PyLong_AsLong(arg);
    if (seq == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t slot = history_slot(self, seq);
    if (self->seqs[slot] != seq || self->items[slot] == NULL)
        Py_RETURN_NONE;
    if (!self->is_packet[slot])
        return Py_NewRef(self->items[slot]);
    PyObject *header = PyBytes_FromStringAndSize((const char *)self->headers[slot], 12);
    if (header == NULL)
        return NULL;
    PyObject *item = PyTuple_Pack(2, header, self->items[slot]);
    Py_DECREF(header);
    return item;
}

static PyMethodDef history_methods[] = {
    {"put", (PyCFunction)(void (*)(void))history_put, METH_FASTCALL,
     "Keep `item` as the packet sent with sequence number `seq`."},
    {"get", (PyCFunction)history_get, METH_O,
     "The packet sent with sequence number `seq`, or None (never sent, or overwritten)."},
    {NULL},
};

static PyMemberDef history_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(History, weakrefs), READONLY, NULL},
    {NULL},
};

static PyType_Slot history_slots[] = {
    {Py_tp_doc, "Fixed-size ring of sent packets keyed by downstream sequence number."},
    {Py_tp_new, history_new},
    {Py_tp_init, history_init},
    {Py_tp_dealloc, history_dealloc},
    {Py_tp_traverse, history_traverse},
    {Py_tp_clear, history_clear},
    {Py_tp_methods, history_methods},
    {Py_tp_members, history_members},
    {0, NULL},
};

static PyType_Spec history_spec = {
    "server.sfu._fanout.PacketHistory", sizeof(History), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, history_slots,
};

/* ------------------------------------------------------------------ Path */

typedef struct {
    PyObject_HEAD
    PyObject *weakrefs;
    char connected;
    int unchecked;
    PyObject *udp;
    unsigned long long ntp_time;
    unsigned long long rtp_timestamp;
    unsigned long long octet_count;
    unsigned long long packet_count;
    /* sender reports (ForwardingSender.start_reports): the next one's time (time.monotonic,
     * 0: none), the interval, and the SR + SDES compound whose sender info gets filled in */
    double report_at;
    double report_interval;
    PyObject *report_template;
    /* set by _set_direct(): the socket the loop writes to, the remote and the SRTP context */
    PyObject *direct_socket; /* kept so its descriptor stays this socket's */
    PyObject *direct_remote;
    int fd;
    void *srtp_context;
    struct sockaddr_storage address;
    socklen_t address_length;
} Path;

static int path_clear(Path *self) {
    Py_CLEAR(self->udp);
    Py_CLEAR(self->report_template);
    Py_CLEAR(self->direct_socket);
    Py_CLEAR(self->direct_remote);
    return 0;
}

static void path_dealloc(Path *self) {
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    path_clear(self);
    PyTypeObject *type = Py_TYPE(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type); /* instances of heap types own a reference to their type */
}

static int path_traverse(Path *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->udp);
    Py_VISIT(self->report_template);
    Py_VISIT(self->direct_socket);
    Py_VISIT(self->direct_remote);
    return 0;
}

static PyObject *path_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Path *self = (Path *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fd = -1;
    return (PyObject *)self;
}

/* _set_direct(socket, fd, (host, port), srtp context address): where the loop sends; or
 * _set_direct(None, -1, None, 0): the loop leaves this path to send_now. */
static PyObject *path_set_direct(Path *self, PyObject *args) {
    PyObject *sock, *remote;
    int fd;
    unsigned long long context;
    if (!PyArg_ParseTuple(args, "OiOK", &sock, &fd, &remote, &context))
        return NULL;
    self->fd = -1;
    self->srtp_context = NULL;
    Py_CLEAR(self->direct_socket);
    Py_CLEAR(self->direct_remote);
    if (sock == Py_None || fd < 0 || context == 0)
        Py_RETURN_NONE;
    /* (host, port[, ...]) with a numeric host; anything else stays with send_now */
    if (!PyTuple_Check(remote) || PyTuple_GET_SIZE(remote) < 2 ||
        !PyUnicode_Check(PyTuple_GET_ITEM(remote, 0)))
        Py_RETURN_NONE;
    const char *host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(remote, 0));
    if (host == NULL)
        return NULL;
    long port = PyLong_AsLong(PyTuple_GET_ITEM(remote, 1));
    if (port == -1 && PyErr_Occurred())
        return NULL;
    if (port < 0 || port > 65535)
        Py_RETURN_NONE;
    memset(&self->address, 0, sizeof(self->address));
    struct sockaddr_in *v4 = (struct sockaddr_in *)&self->address;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&self->address;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        self->address_length = sizeof(*v4);
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        self->address_length = sizeof(*v6);
    } else {
        Py_RETURN_NONE; /* not a numeric address: send_now handles it */
    }
    self->direct_socket = Py_NewRef(sock);
    self->direct_remote = Py_NewRef(remote);
    self->fd = fd;
    self->srtp_context = (void *)(uintptr_t)context;
    Py_RETURN_NONE;
}

static PyMethodDef path_methods[] = {
    {"_set_direct", (PyCFunction)path_set_direct, METH_VARARGS,
     "Where forward() sends this path's packets (socket, fd, remote, SRTP context address)."},
    {NULL},
};

static PyMemberDef path_members[] = {
    {"_connected", T_BOOL, offsetof(Path, connected), 0, NULL},
    {"_unchecked", T_INT, offsetof(Path, unchecked), 0, NULL},
    {"_udp", T_OBJECT, offsetof(Path, udp), 0, NULL},
    {"ntp_time", T_ULONGLONG, offsetof(Path, ntp_time), 0, NULL},
    {"rtp_timestamp", T_ULONGLONG, offsetof(Path, rtp_timestamp), 0, NULL},
    {"octet_count", T_ULONGLONG, offsetof(Path, octet_count), 0, NULL},
    {"packet_count", T_ULONGLONG, offsetof(Path, packet_count), 0, NULL},
    {"report_at", T_DOUBLE, offsetof(Path, report_at), 0, NULL},
    {"report_interval", T_DOUBLE, offsetof(Path, report_interval), 0, NULL},
    {"report_template", T_OBJECT, offsetof(Path, report_template), 0, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Path, weakrefs), READONLY, NULL},
    {NULL},
};

static PyType_Slot path_slots[] = {
    {Py_tp_doc, "ForwardingSender's path state and sender-report counts, in C."},
    {Py_tp_new, path_new},
    {Py_tp_dealloc, path_dealloc},
    {Py_tp_traverse, path_traverse},
    {Py_tp_clear, path_clear},
    {Py_tp_methods, path_methods},
    {Py_tp_members, path_members},
    {0, NULL},
};

static PyType_Spec path_spec = {
    "server.sfu._fanout.Path", sizeof(Path), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, path_slots,
};

/* ------------------------------------------------------------------ Leg */

typedef struct {
    PyObject_HEAD
    PyObject *weakrefs;
    PyObject *params;
    char waiting_keyframe;
    int up_pt;
    PyObject *down_pt;
    PyObject *extension_key;
    unsigned int ssrc;
    PyObject *rewriter;
    PyObject *history;
    PyObject *forwarder;
    PyObject *stats;
} Leg;

static int leg_clear(Leg *self) {
    Py_CLEAR(self->params);
    Py_CLEAR(self->down_pt);
    Py_CLEAR(self->extension_key);
    Py_CLEAR(self->rewriter);
    Py_CLEAR(self->history);
    Py_CLEAR(self->forwarder);
    Py_CLEAR(self->stats);
    return 0;
}

static void leg_dealloc(Leg *self) {
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    leg_clear(self);
    PyTypeObject *type = Py_TYPE(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type); /* instances of heap types own a reference to their type */
}

static int leg_traverse(Leg *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->params);
    Py_VISIT(self->down_pt);
    Py_VISIT(self->extension_key);
    Py_VISIT(self->rewriter);
    Py_VISIT(self->history);
    Py_VISIT(self->forwarder);
    Py_VISIT(self->stats);
    return 0;
}

static PyObject *leg_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Leg *self = (Leg *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->params = Py_NewRef(Py_None);
    self->down_pt = Py_NewRef(Py_None);
    self->extension_key = Py_NewRef(Py_None);
    self->up_pt = -1;
    return (PyObject *)self;
}

static PyMemberDef leg_members[] = {
    {"_params", T_OBJECT, offsetof(Leg, params), 0, NULL},
    {"_waiting_keyframe", T_BOOL, offsetof(Leg, waiting_keyframe), 0, NULL},
    {"_up_pt", T_INT, offsetof(Leg, up_pt), 0, NULL},
    {"_down_pt", T_OBJECT, offsetof(Leg, down_pt), 0, NULL},
    {"_extension_key", T_OBJECT, offsetof(Leg, extension_key), 0, NULL},
    {"_ssrc", T_UINT, offsetof(Leg, ssrc), 0, NULL},
    {"_rewriter", T_OBJECT, offsetof(Leg, rewriter), 0, NULL},
    {"_history", T_OBJECT, offsetof(Leg, history), 0, NULL},
    {"_forwarder", T_OBJECT, offsetof(Leg, forwarder), 0, NULL},
    {"_stats", T_OBJECT, offsetof(Leg, stats), 0, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Leg, weakrefs), READONLY, NULL},
    {NULL},
};

static PyType_Slot leg_slots[] = {
    {Py_tp_doc, "DownTrack's per-packet fields, in C for forward()."},
    {Py_tp_new, leg_new},
    {Py_tp_dealloc, leg_dealloc},
    {Py_tp_traverse, leg_traverse},
    {Py_tp_clear, leg_clear},
    {Py_tp_members, leg_members},
    {0, NULL},
};

static PyType_Spec leg_spec = {
    "server.sfu._fanout.Leg", sizeof(Leg), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, leg_slots,
};

static PyTypeObject *LegType, *PathType, *NumberingType, *HistoryType;

/* ------------------------------------------------------------------ forward() */

typedef struct {
    long payload_type;
    long marker;
    long sequence_number;
    long long timestamp;
    unsigned long long ntp_time;
    double now;
    PyObject *tails;
    PyObject *out; /* borrowed: the caller's */
} Packet;

static PyObject *packet_names[7];

/* Read what the loop needs of `out` (an up_track.Outgoing); p->tails is a new reference. */
static int read_packet(PyObject *out, Packet *p) {
    PyObject *values[7];
    for (int i = 0; i < 7; i++) {
        values[i] = PyObject_GetAttr(out, packet_names[i]);
        if (values[i] == NULL) {
            for (int j = 0; j < i; j++)
                Py_DECREF(values[j]);
            return -1;
        }
    }
    p->payload_type = PyLong_AsLong(values[0]);
    p->marker = PyLong_AsLong(values[1]);
    p->sequence_number = PyLong_AsLong(values[2]);
    p->timestamp = PyLong_AsLongLong(values[3]);
    p->ntp_time = PyLong_AsUnsignedLongLongMask(values[4]);
    p->now = PyFloat_AsDouble(values[5]);
    p->tails = values[6];
    p->out = out;
    for (int i = 0; i < 6; i++)
        Py_DECREF(values[i]);
    if (PyErr_Occurred() || !PyDict_CheckExact(p->tails)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "out.tails must be a dict");
        Py_DECREF(p->tails);
        return -1;
    }
    return 0;
}

/* Is the asyncio transport open with nothing queued? (1 yes, 0 no, -1 error) */
static int transport_idle(PyObject *udp) {
    PyObject *closing = PyObject_GetAttr(udp, str_closing);
    if (closing == NULL)
        goto not_asyncio;
    int open = closing == Py_False;
    Py_DECREF(closing);
    if (!open)
        return 0;
    PyObject *size = PyObject_GetAttr(udp, str_buffer_size);
    if (size == NULL)
        goto not_asyncio;
    long queued = PyLong_AsLong(size);
    Py_DECREF(size);
    if (queued == -1 && PyErr_Occurred())
        return -1;
    return queued == 0;
not_asyncio:
    /* Another event loop's transport: send_now's public calls handle it. */
    if (!PyErr_ExceptionMatches(PyExc_AttributeError))
        return -1;
    PyErr_Clear();
    return 0;
}

typedef struct {
    PyObject *stats;
    long long packets;
    long long bytes;
} Tally;

static int flush_tally(Tally *t) {
    if (t->stats == NULL || t->packets == 0)
        return 0;
    PyObject *names[2] = {str_forwarded_packets, str_forwarded_bytes};
    long long adds[2] = {t->packets, t->bytes};
    for (int i = 0; i < 2; i++) {
        PyObject *old = PyObject_GetAttr(t->stats, names[i]);
        if (old == NULL)
            return -1;
        PyObject *add = PyLong_FromLongLong(adds[i]);
        if (add == NULL) {
            Py_DECREF(old);
            return -1;
        }
        PyObject *sum = PyNumber_Add(old, add);
        Py_DECREF(old);
        Py_DECREF(add);
        if (sum == NULL)
            return -1;
        int rc = PyObject_SetAttr(t->stats, names[i], sum);
        Py_DECREF(sum);
        if (rc < 0)
            return -1;
    }
    t->packets = t->bytes = 0;
    return 0;
}

/* Send srtp_buffer[0:size] on the path's socket. As send_now: when the socket refuses it,
 * asyncio's own sendto takes over (it queues on EAGAIN, reports the rest to the protocol). */
static int send_datagram(Path *path, int size) {
    if (send_filter != NULL) {
        PyObject *data = PyBytes_FromStringAndSize((const char *)srtp_buffer, size);
        if (data == NULL)
            return -1;
        PyObject *verdict = PyObject_CallOneArg(send_filter, data);
        Py_DECREF(data);
        if (verdict == NULL)
            return -1;
        int drop = PyObject_IsTrue(verdict);
        Py_DECREF(verdict);
        if (drop < 0)
            return -1;
        if (drop)
            return 0; /* lost on the way, as far as anyone can tell */
    }
    ssize_t sent = sendto(path->fd, srtp_buffer, (size_t)size, 0,
                          (struct sockaddr *)&path->address, path->address_length);
    if (sent >= 0)
        return 0;
    PyObject *data = PyBytes_FromStringAndSize((const char *)srtp_buffer, size);
    if (data == NULL)
        return -1;
    PyObject *send_args[3] = {path->udp, data, path->direct_remote};
    PyObject *r = PyObject_VectorcallMethod(str_sendto, send_args,
                                            3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(data);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static inline void put_u32(unsigned char *at, unsigned long long value) {
    at[0] = (unsigned char)(value >> 24);
    at[1] = (unsigned char)(value >> 16);
    at[2] = (unsigned char)(value >> 8);
    at[3] = (unsigned char)value;
}

/* The sender report that is due, as ForwardingSender._report_due writes it: the template's
 * sender info filled with the last packet's NTP and RTP times and the counts so far. */
static int send_report(Path *path, double now) {
    PyObject *template = path->report_template;
    path->report_at = now + path->report_interval;
    if (template == NULL || !PyBytes_CheckExact(template))
        return 0;
    Py_ssize_t length = PyBytes_GET_SIZE(template);
    if (length < 28 || length > BUFFER_SIZE - max_rtcp_trailer)
        return 0;
    memcpy(srtp_buffer, PyBytes_AS_STRING(template), (size_t)length);
    put_u32(srtp_buffer + 8, path->ntp_time >> 32);
    put_u32(srtp_buffer + 12, path->ntp_time & 0xFFFFFFFFULL);
    put_u32(srtp_buffer + 16, path->rtp_timestamp & 0xFFFFFFFFULL);
    put_u32(srtp_buffer + 20, path->packet_count & 0xFFFFFFFFULL);
    put_u32(srtp_buffer + 24, path->octet_count & 0xFFFFFFFFULL);
    int size = (int)length;
    int status = srtp_protect_rtcp_fn(path->srtp_context, srtp_buffer, &size);
    if (status) {
        PyErr_Format(srtp_error, "srtp_protect_rtcp failed with status %d", status);
        return -1;
    }
    return send_datagram(path, size);
}

/* Forward to one leg the common way. 1: done (sent, or not placed); 0: needs the Python path
 * (nothing was changed that it would not do again the same); -1: error. */
static int forward_leg(Leg *leg, Packet *p, Tally *tally) {
    /* (A field deleted from Python reads NULL here: that down track takes the Python path.) */
    if (leg->params == NULL || leg->params == Py_None || leg->waiting_keyframe ||
        leg->up_pt != p->payload_type || leg->down_pt == NULL ||
        !PyLong_CheckExact(leg->down_pt) || leg->extension_key == NULL || leg->stats == NULL)
        return 0;
    PyObject *forwarder = leg->forwarder;
    if (forwarder == NULL || !PyObject_TypeCheck(forwarder, PathType))
        return 0;
    Path *path = (Path *)forwarder;
    if (path->unchecked >= path_check_packets) {
        /* Time to look at the nominated pair again: ForwardingSender._find_path does. Any
         * trouble (no direct path, not connected) goes to the Python path, which reports. */
        PyObject *r = PyObject_CallMethodNoArgs(forwarder, str_find_path);
        if (r == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_ConnectionError))
                return -1;
            PyErr_Clear();
            return 0;
        }
        int turn = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (turn != 0)
            return turn < 0 ? -1 : 0;
    }
    if (!path->connected || path->fd < 0 || path->udp == NULL || path->udp == Py_None)
        return 0;
    if (leg->rewriter == NULL || !PyObject_TypeCheck(leg->rewriter, NumberingType) ||
        leg->history == NULL || !PyObject_TypeCheck(leg->history, HistoryType))
        return 0;
    PyObject *tail = PyDict_GetItemWithError(p->tails, leg->extension_key);
    if (tail == NULL) {
        if (PyErr_Occurred())
            return -1;
        /* The first subscriber with this extension layout: DownTrack._packet_tail builds the
         * tail for all of them (and keeps it in out.tails, which holds it from then on). */
        PyObject *built = PyObject_CallMethodOneArg((PyObject *)leg, str_packet_tail, p->out);
        if (built == NULL)
            return -1;
        Py_DECREF(built);
        tail = PyDict_GetItemWithError(p->tails, leg->extension_key);
        if (tail == NULL)
            return PyErr_Occurred() ? -1 : 0;
    }
    if (!PyTuple_CheckExact(tail) || PyTuple_GET_SIZE(tail) != 2 ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(tail, 1)))
        return 0;
    PyObject *rest = PyTuple_GET_ITEM(tail, 1);
    Py_ssize_t rest_size = PyBytes_GET_SIZE(rest);
    if (12 + rest_size > BUFFER_SIZE - max_trailer)
        return 0; /* send_now reports it */
    int idle = transport_idle(path->udp);
    if (idle <= 0)
        return idle;
    long first = PyLong_AsLong(PyTuple_GET_ITEM(tail, 0));
    if (first == -1 && PyErr_Occurred())
        return -1;
    long down_pt = PyLong_AsLong(leg->down_pt);
    if (down_pt == -1 && PyErr_Occurred())
        return -1;

    long seq;
    long long ts;
    int placed = numbering_numbers((Numbering *)leg->rewriter, p->sequence_number & 0xFFFF,
                                   p->timestamp & 0xFFFFFFFFLL, p->now, &seq, &ts);
    if (placed <= 0)
        return placed < 0 ? -1 : 1;

    unsigned char header[12];
    header[0] = (unsigned char)first;
    header[1] = (unsigned char)(((p->marker & 1) << 7) | (down_pt & 0x7F));
    header[2] = (unsigned char)(seq >> 8);
    header[3] = (unsigned char)seq;
    header[4] = (unsigned char)(ts >> 24);
    header[5] = (unsigned char)(ts >> 16);
    header[6] = (unsigned char)(ts >> 8);
    header[7] = (unsigned char)ts;
    header[8] = (unsigned char)(leg->ssrc >> 24);
    header[9] = (unsigned char)(leg->ssrc >> 16);
    header[10] = (unsigned char)(leg->ssrc >> 8);
    header[11] = (unsigned char)leg->ssrc;

    /* The NACK history keeps (header, shared tail), as DownTrack.forward does. */
    history_put_packet((History *)leg->history, seq, header, rest);

    int size = (int)(12 + rest_size);
    memcpy(srtp_buffer, header, 12);
    memcpy(srtp_buffer + 12, PyBytes_AS_STRING(rest), (size_t)rest_size);
    int status = srtp_protect_fn(path->srtp_context, srtp_buffer, &size);
    if (status) {
        PyErr_Format(srtp_error, "srtp_protect failed with status %d", status);
        return -1;
    }
    if (send_datagram(path, size) < 0)
        return -1;
    path->unchecked += 1;
    path->ntp_time = p->ntp_time;
    path->rtp_timestamp = (unsigned long long)ts;
    path->octet_count += (unsigned long long)rest_size;
    path->packet_count += 1;
    if (path->report_at > 0 && p->now >= path->report_at && send_report(path, p->now) < 0)
        return -1;

    if (leg->stats != tally->stats) {
        if (flush_tally(tally) < 0)
            return -1;
        Py_XSETREF(tally->stats, Py_NewRef(leg->stats)); /* held: Python runs in between */
    }
    tally->packets += 1;
    tally->bytes += 12 + rest_size;
    return 1;
}

static PyObject *forward(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "forward(down_tracks, out) takes 2 arguments");
        return NULL;
    }
    if (srtp_protect_fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "server.sfu._fanout is not configured");
        return NULL;
    }
    /* A snapshot: a down track's Python path may attach or detach others. */
    PyObject *downs = PySequence_Tuple(args[0]);
    if (downs == NULL)
        return NULL;
    Packet packet;
    if (read_packet(args[1], &packet) < 0) {
        Py_DECREF(downs);
        return NULL;
    }
    Tally tally = {NULL, 0, 0};
    PyObject *slow = NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(downs);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *down = PyTuple_GET_ITEM(downs, i);
        int done = 0;
        if (PyObject_TypeCheck(down, LegType)) {
            done = forward_leg((Leg *)down, &packet, &tally);
            if (done < 0)
                goto error;
        }
        if (done)
            continue;
        PyObject *call_args[2] = {down, args[1]};
        PyObject *r = PyObject_VectorcallMethod(str_forward, call_args,
                                                2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (r == NULL)
            goto error;
        if (r == Py_None) {
            Py_DECREF(r);
            continue;
        }
        if (slow == NULL && (slow = PyList_New(0)) == NULL) {
            Py_DECREF(r);
            goto error;
        }
        int rc = PyList_Append(slow, r);
        Py_DECREF(r);
        if (rc < 0)
            goto error;
    }
    if (flush_tally(&tally) < 0)
        goto error;
    Py_XDECREF(tally.stats);
    Py_DECREF(packet.tails);
    Py_DECREF(downs);
    if (slow == NULL)
        Py_RETURN_NONE;
    return slow;
error:
    {
        /* Count what was sent before the error, keeping the error. */
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        if (flush_tally(&tally) < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, traceback);
    }
    Py_XDECREF(tally.stats);
    Py_DECREF(packet.tails);
    Py_DECREF(downs);
    Py_XDECREF(slow);
    return NULL;
}

static PyObject *configure(PyObject *module, PyObject *args) {
    unsigned long long protect, protect_rtcp;
    int trailer, rtcp_trailer, check;
    PyObject *error;
    if (!PyArg_ParseTuple(args, "KKiiiO", &protect, &protect_rtcp, &trailer, &rtcp_trailer,
                          &check, &error))
        return NULL;
    if (protect == 0 || protect_rtcp == 0 || trailer < 0 || trailer >= BUFFER_SIZE - 12 ||
        rtcp_trailer < 0 || rtcp_trailer >= BUFFER_SIZE - 28 || check < 1 ||
        !PyExceptionClass_Check(error)) {
        PyErr_SetString(PyExc_ValueError,
                        "configure(protect, protect_rtcp, trailer, rtcp_trailer, check, error)");
        return NULL;
    }
    srtp_protect_fn = (protect_fn)(uintptr_t)protect;
    srtp_protect_rtcp_fn = (protect_fn)(uintptr_t)protect_rtcp;
    max_trailer = trailer;
    max_rtcp_trailer = rtcp_trailer;
    path_check_packets = check;
    Py_XSETREF(srtp_error, Py_NewRef(error));
    Py_RETURN_NONE;
}

static PyObject *set_send_filter(PyObject *module, PyObject *filter) {
    if (filter != Py_None && !PyCallable_Check(filter)) {
        PyErr_SetString(PyExc_TypeError, "set_send_filter takes a callable or None");
        return NULL;
    }
    Py_XSETREF(send_filter, filter == Py_None ? NULL : Py_NewRef(filter));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))forward, METH_FASTCALL,
     "forward(down_tracks, out): one upstream packet to every down track; the awaitables of "
     "packets left to aiortc's path, or None."},
    {"configure", configure, METH_VARARGS,
     "configure(srtp_protect address, srtp_protect_rtcp address, max SRTP trailer, max "
     "SRTCP trailer, path check packets, libsrtp error type)."},
    {"set_send_filter", set_send_filter, METH_O,
     "For loss tests: a callable given each datagram the loop would send (True drops it), "
     "or None."},
    {NULL},
};

static struct PyModuleDef fanout_module = {
    PyModuleDef_HEAD_INIT, "server.sfu._fanout",
    "The forwarding loop in C (see server/sfu/fanout.py).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__fanout(void) {
    PyObject *m = PyModule_Create(&fanout_module);
    if (m == NULL)
        return NULL;
#define INTERN(var, text)                                                                      \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                      \
        goto fail;
    INTERN(str_forward, "forward");
    INTERN(str_find_path, "_find_path");
    INTERN(str_packet_tail, "_packet_tail");
    INTERN(str_sendto, "sendto");
    INTERN(str_closing, "_closing");
    INTERN(str_buffer_size, "_buffer_size");
    INTERN(str_forwarded_packets, "forwarded_packets");
    INTERN(str_forwarded_bytes, "forwarded_bytes");
    static const char *names[7] = {"payload_type", "marker", "sequence_number", "timestamp",
                                   "ntp_time", "now", "tails"};
    for (int i = 0; i < 7; i++)
        INTERN(packet_names[i], names[i]);
#undef INTERN
    NumberingType = (PyTypeObject *)PyType_FromSpec(&numbering_spec);
    PathType = (PyTypeObject *)PyType_FromSpec(&path_spec);
    LegType = (PyTypeObject *)PyType_FromSpec(&leg_spec);
    HistoryType = (PyTypeObject *)PyType_FromSpec(&history_spec);
    if (NumberingType == NULL || PathType == NULL || LegType == NULL || HistoryType == NULL)
        goto fail;
    if (PyModule_AddObjectRef(m, "StreamNumbering", (PyObject *)NumberingType) < 0 ||
        PyModule_AddObjectRef(m, "Path", (PyObject *)PathType) < 0 ||
        PyModule_AddObjectRef(m, "Leg", (PyObject *)LegType) < 0 ||
        PyModule_AddObjectRef(m, "PacketHistory", (PyObject *)HistoryType) < 0 ||
        PyModule_AddIntConstant(m, "MAX_LATE", MAX_LATE) < 0 ||
        PyModule_AddIntConstant(m, "MAX_TOO_OLD_IN_A_ROW", MAX_TOO_OLD_IN_A_ROW) < 0 ||
        PyModule_AddIntConstant(m, "BUFFER_SIZE", BUFFER_SIZE) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
