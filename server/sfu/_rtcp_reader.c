/* A subscriber's RTCP read in C where it arrives: the socket of its down connection's pair.
 *
 * Each subscriber sends receiver reports (and REMB) a few times a second. Through asyncio's
 * datagram transport, aioice's protocol and the Python lane (aiortc_tap._SubscriberRtcp),
 * each one cost five Python calls, a decrypt through cffi and a header scan in Python: at
 * 64 subscribers about as much node CPU as a tenth of the forwarding loop. A Reader takes
 * the event loop's reader callback of that socket in place of the transport's _read_ready
 * and does what the lane does for the common datagram: an SRTCP compound of reports only
 * (SR, RR, SDES, BYE) is decrypted here, counted in aiortc's transport statistics, and ends
 * here. A compound with anything else (REMB, NACK, PLI, XR, ...) goes decrypted to the lane's
 * Python (on_compound); every other datagram (STUN, DTLS, anything before the transport has
 * connected) to the protocol's datagram_received with its address, as asyncio's transport
 * gives it. aiortc_tap._SubscriberRtcp stays the reference and says when a Reader is used.
 *
 * Types:
 *   Reader(protocol, fd, dtls, on_compound): read_ready() is the loop's reader for `fd`;
 *     set_srtp(session, context) gives it the transport's receiving SRTP context (and the
 *     pylibsrtp Session that owns it), set_srtp(None, 0) takes it away; `ended` counts the
 *     compounds that ended here.
 * Functions:
 *   configure(srtp_unprotect_rtcp address): libsrtp's, as pylibsrtp links it
 *   set_receive_filter(callable or None): loss tests only; given each SRTCP datagram this
 *     reads, True drops it (tests/support/loss.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* No UDP datagram is larger (aiortc_tap.UDP_RECEIVE_SIZE). */
#define RECEIVE_SIZE 65536

typedef int (*unprotect_fn)(void *ctx, void *data, int *len);

static unprotect_fn srtp_unprotect_rtcp_fn = NULL;
static PyObject *receive_filter = NULL;
static unsigned char buffer[RECEIVE_SIZE];

static PyObject *str_datagram_received, *str_error_received, *str_rx_bytes, *str_rx_packets;

typedef struct {
    PyObject_HEAD
    PyObject *weakrefs;
    PyObject *protocol;    /* aioice's StunProtocol of the socket */
    PyObject *dtls;        /* the RTCDtlsTransport whose statistics count what ends here */
    PyObject *on_compound; /* on_compound(plain compound, arrival time): the lane's Python */
    PyObject *session;     /* the pylibsrtp Session owning srtp_context, held while used */
    void *srtp_context;    /* NULL until set_srtp: then SRTCP is decrypted here */
    int fd;
    unsigned long long ended;
} Reader;

static PyTypeObject *ReaderType = NULL;

static int reader_clear(Reader *self) {
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->dtls);
    Py_CLEAR(self->on_compound);
    Py_CLEAR(self->session);
    self->srtp_context = NULL;
    return 0;
}

static void reader_dealloc(Reader *self) {
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    reader_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static int reader_traverse(Reader *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->protocol);
    Py_VISIT(self->dtls);
    Py_VISIT(self->on_compound);
    Py_VISIT(self->session);
    return 0;
}

static PyObject *reader_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {"protocol", "fd", "dtls", "on_compound", NULL};
    PyObject *protocol, *dtls, *on_compound;
    int fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OiOO", keywords, &protocol, &fd, &dtls,
                                     &on_compound))
        return NULL;
    if (fd < 0 || !PyCallable_Check(on_compound)) {
        PyErr_SetString(PyExc_ValueError, "Reader(protocol, fd >= 0, dtls, callable)");
        return NULL;
    }
    Reader *self = (Reader *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->protocol = Py_NewRef(protocol);
    self->dtls = Py_NewRef(dtls);
    self->on_compound = Py_NewRef(on_compound);
    self->fd = fd;
    return (PyObject *)self;
}

static PyObject *reader_set_srtp(Reader *self, PyObject *args) {
    PyObject *session;
    unsigned long long context;
    if (!PyArg_ParseTuple(args, "OK", &session, &context))
        return NULL;
    if ((session == Py_None) != (context == 0)) {
        PyErr_SetString(PyExc_ValueError, "set_srtp(session, context) or set_srtp(None, 0)");
        return NULL;
    }
    Py_XSETREF(self->session, session == Py_None ? NULL : Py_NewRef(session));
    self->srtp_context = (void *)(uintptr_t)context;
    Py_RETURN_NONE;
}

/* aiortc's transport statistics count a datagram read here, as the lane's _count_received. */
static int count_received(Reader *self, Py_ssize_t size) {
    PyObject *names[2] = {str_rx_bytes, str_rx_packets};
    long long adds[2] = {size, 1};
    for (int i = 0; i < 2; i++) {
        PyObject *old = PyObject_GetAttr(self->dtls, names[i]);
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
        int rc = PyObject_SetAttr(self->dtls, names[i], sum);
        Py_DECREF(sum);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* 1 if the decrypted compound holds reports and descriptions only (nothing to act on), read
 * as rtcp_feedback.read_subscriber_rtcp reads it; 0 if anything else, or a part that runs past
 * the end: the lane's Python then reads it. */
static int reports_only(const unsigned char *data, int size) {
    int pos = 0;
    if (size < 4)
        return 0;
    while (pos + 4 <= size) {
        int packet_type = data[pos + 1];
        int end = pos + 4 * (((data[pos + 2] << 8) | data[pos + 3]) + 1);
        if (end > size || packet_type < 200 || packet_type > 203) /* SR, RR, SDES, BYE */
            return 0;
        pos = end;
    }
    return 1;
}

/* The sender's address as asyncio's transport gives it (socket.recvfrom's). */
static PyObject *address_tuple(const struct sockaddr_storage *address) {
    char host[INET6_ADDRSTRLEN + IF_NAMESIZE + 1];
    if (address->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)address;
        if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof host) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(si)", host, ntohs(a->sin_port));
    }
    if (address->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)address;
        if (inet_ntop(AF_INET6, &a->sin6_addr, host, INET6_ADDRSTRLEN) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        char name[IF_NAMESIZE];
        /* Python names a scoped (link-local) address "addr%interface". */
        if (a->sin6_scope_id != 0 && if_indextoname(a->sin6_scope_id, name) != NULL) {
            size_t used = strlen(host);
            snprintf(host + used, sizeof host - used, "%%%s", name);
        }
        return Py_BuildValue("(siII)", host, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo),
                             a->sin6_scope_id);
    }
    PyErr_SetString(PyExc_OSError, "unexpected address family");
    return NULL;
}

/* Hand buffer[0:size] to the protocol as asyncio's transport would. */
static int hand_on(Reader *self, Py_ssize_t size, const struct sockaddr_storage *address) {
    PyObject *data = PyBytes_FromStringAndSize((const char *)buffer, size);
    if (data == NULL)
        return -1;
    PyObject *addr = address_tuple(address);
    if (addr == NULL) {
        Py_DECREF(data);
        return -1;
    }
    PyObject *call[3] = {self->protocol, data, addr};
    PyObject *r = PyObject_VectorcallMethod(str_datagram_received, call,
                                            3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(data);
    Py_DECREF(addr);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* 1: the loss test's filter drops buffer[0:size]. */
static int filtered(Py_ssize_t size) {
    if (receive_filter == NULL)
        return 0;
    PyObject *data = PyBytes_FromStringAndSize((const char *)buffer, size);
    if (data == NULL)
        return -1;
    PyObject *verdict = PyObject_CallOneArg(receive_filter, data);
    Py_DECREF(data);
    if (verdict == NULL)
        return -1;
    int drop = PyObject_IsTrue(verdict);
    Py_DECREF(verdict);
    return drop;
}

/* One SRTCP datagram in buffer[0:size] on a connected transport. */
static int read_srtcp(Reader *self, Py_ssize_t size) {
    int drop = filtered(size);
    if (drop != 0)
        return drop < 0 ? -1 : 0;
    if (count_received(self, size) < 0)
        return -1;
    int plain = (int)size;
    if (srtp_unprotect_rtcp_fn(self->srtp_context, buffer, &plain) != 0)
        return 0; /* as aiortc does: a datagram that does not authenticate is dropped */
    if (reports_only(buffer, plain)) {
        self->ended++;
        return 0;
    }
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now); /* time.monotonic()'s clock */
    PyObject *compound = PyBytes_FromStringAndSize((const char *)buffer, plain);
    if (compound == NULL)
        return -1;
    PyObject *arrived = PyFloat_FromDouble((double)now.tv_sec + now.tv_nsec * 1e-9);
    if (arrived == NULL) {
        Py_DECREF(compound);
        return -1;
    }
    PyObject *call[2] = {compound, arrived};
    PyObject *r = PyObject_Vectorcall(self->on_compound, call, 2, NULL);
    Py_DECREF(compound);
    Py_DECREF(arrived);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* One datagram per call, as asyncio's transport reads: the loop calls again while more wait
 * (a second recvfrom to find the socket empty cost more than the rare extra turn). */
static PyObject *reader_read_ready(Reader *self, PyObject *unused) {
    struct sockaddr_storage address;
    socklen_t address_length = sizeof address;
    ssize_t size = recvfrom(self->fd, buffer, sizeof buffer, MSG_DONTWAIT,
                            (struct sockaddr *)&address, &address_length);
    if (size < 0) {
        int failure = errno;
        if (failure == EAGAIN || failure == EWOULDBLOCK || failure == EINTR)
            Py_RETURN_NONE;
        /* As asyncio's transport: the protocol hears of the error (an ICMP one, say). */
        PyObject *error = PyObject_CallFunction(PyExc_OSError, "is", failure, strerror(failure));
        if (error == NULL)
            return NULL;
        PyObject *call[2] = {self->protocol, error};
        PyObject *r = PyObject_VectorcallMethod(str_error_received, call,
                                                2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(error);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
        Py_RETURN_NONE;
    }
    /* RFC 5761: RTCP packet types 192-223 share the first byte's range with RTP. */
    int rc;
    if (self->srtp_context != NULL && size >= 8 && buffer[0] > 127 && buffer[0] < 192 &&
        buffer[1] > 191 && buffer[1] < 224)
        rc = read_srtcp(self, size);
    else
        rc = hand_on(self, size, &address);
    if (rc < 0)
        return NULL; /* the event loop logs it, as it would asyncio's own reader's */
    Py_RETURN_NONE;
}

static PyMethodDef reader_methods[] = {
    {"read_ready", (PyCFunction)reader_read_ready, METH_NOARGS,
     "The event loop's reader callback for the socket: read what has arrived."},
    {"set_srtp", (PyCFunction)reader_set_srtp, METH_VARARGS,
     "set_srtp(session, context address): decrypt SRTCP here from now; (None, 0): stop."},
    {NULL},
};

static PyMemberDef reader_members[] = {
    {"ended", T_ULONGLONG, offsetof(Reader, ended), READONLY,
     "Compounds of reports only that ended here."},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Reader, weakrefs), READONLY, NULL},
    {NULL},
};

static PyType_Slot reader_slots[] = {
    {Py_tp_doc, "A down connection's socket read in C (server/sfu/_rtcp_reader.c)."},
    {Py_tp_new, reader_new},
    {Py_tp_dealloc, reader_dealloc},
    {Py_tp_traverse, reader_traverse},
    {Py_tp_clear, reader_clear},
    {Py_tp_methods, reader_methods},
    {Py_tp_members, reader_members},
    {0, NULL},
};

static PyType_Spec reader_spec = {
    "server.sfu._rtcp_reader.Reader",
    sizeof(Reader),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    reader_slots,
};

static PyObject *configure(PyObject *module, PyObject *args) {
    unsigned long long unprotect_rtcp;
    if (!PyArg_ParseTuple(args, "K", &unprotect_rtcp))
        return NULL;
    if (unprotect_rtcp == 0) {
        PyErr_SetString(PyExc_ValueError, "configure(srtp_unprotect_rtcp address)");
        return NULL;
    }
    srtp_unprotect_rtcp_fn = (unprotect_fn)(uintptr_t)unprotect_rtcp;
    Py_RETURN_NONE;
}

static PyObject *set_receive_filter(PyObject *module, PyObject *filter) {
    if (filter != Py_None && !PyCallable_Check(filter)) {
        PyErr_SetString(PyExc_TypeError, "set_receive_filter takes a callable or None");
        return NULL;
    }
    Py_XSETREF(receive_filter, filter == Py_None ? NULL : Py_NewRef(filter));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure", configure, METH_VARARGS, "configure(srtp_unprotect_rtcp address)."},
    {"set_receive_filter", set_receive_filter, METH_O,
     "For loss tests: a callable given each SRTCP datagram a Reader reads (True drops it), "
     "or None."},
    {NULL},
};

static struct PyModuleDef reader_module = {
    PyModuleDef_HEAD_INIT, "server.sfu._rtcp_reader",
    "A subscriber's RTCP read in C where it arrives (see the source's opening comment).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__rtcp_reader(void) {
    PyObject *m = PyModule_Create(&reader_module);
    if (m == NULL)
        return NULL;
#define INTERN(var, text)                                                                      \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                      \
        goto fail;
    INTERN(str_datagram_received, "datagram_received");
    INTERN(str_error_received, "error_received");
    INTERN(str_rx_bytes, "_RTCDtlsTransport__rx_bytes");
    INTERN(str_rx_packets, "_RTCDtlsTransport__rx_packets");
#undef INTERN
    ReaderType = (PyTypeObject *)PyType_FromSpec(&reader_spec);
    if (ReaderType == NULL || PyModule_AddObjectRef(m, "Reader", (PyObject *)ReaderType) < 0 ||
        PyModule_AddIntConstant(m, "RECEIVE_SIZE", RECEIVE_SIZE) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
