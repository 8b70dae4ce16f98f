/*
 * overlayd._fastpath: the C twin of the UDP backend's data path.
 *
 * Design note. The pure Python code in overlayd/encap (ipv4.check,
 * udp.outbound, udp.inbound) is the reference; this module makes exactly the
 * same decisions (tests/unit/test_fastpath_parity.py holds it to that) and
 * adds batching: forward_out() drains up to BATCH packets from the tun with
 * the GIL released, classifies them, and hands all accepted ones to ONE
 * sendmmsg(); forward_in() takes up to BATCH datagrams with ONE recvmmsg()
 * and writes the accepted ones to the tun. UDP GSO would batch further, but
 * the kernel refuses it on a socket with SO_NO_CHECK (checksum 0), which the
 * design requires. Dropped outbound packets go back to Python with their
 * reason, so ICMP answers and counters stay in one place (the Python loop).
 *
 * The peer table is overlayd.encap.table.PeerTable: its `mask`,
 * `_by_subnet` (int -> Peer with .node_ip) and `_senders` (node IP -> count)
 * are read here, once per batch where possible.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define PKT_MAX 65536

enum verdict { V_OK = 0, V_TRUNCATED, V_NOT_IPV4, V_BAD_IP_HEADER, V_NO_LEASE, V_UNKNOWN_SENDER,
               V_NOT_OUR_SUBNET, V_COUNT };

/* The values of overlayd.encap.drops.Drop. */
static const char *const reason_names[V_COUNT] = {
    NULL, "truncated", "not_ipv4", "bad_ip_header", "no_lease", "unknown_sender", "not_our_subnet",
};

/* One set of buffers per direction, so the two can run in different threads. */
typedef struct {
    unsigned char data[BATCH][PKT_MAX];
    ssize_t len[BATCH];
} batch_t;

static batch_t *out_batch, *in_batch;

/* ---- pure classification (no Python objects) ---------------------------- */

static int ipv4_check(const unsigned char *p, Py_ssize_t n)
{
    if (n < 20)
        return (n > 0 && (p[0] >> 4) != 4) ? V_NOT_IPV4 : V_TRUNCATED;
    if ((p[0] >> 4) != 4)
        return V_NOT_IPV4;
    unsigned ihl = (p[0] & 0x0F) * 4u;
    unsigned total = ((unsigned)p[2] << 8) | p[3];
    if (ihl < 20 || total < ihl)
        return V_BAD_IP_HEADER;
    if ((Py_ssize_t)total > n)
        return V_TRUNCATED;
    return V_OK;
}

static uint32_t ipv4_dst(const unsigned char *p)
{
    return ((uint32_t)p[16] << 24) | ((uint32_t)p[17] << 16) | ((uint32_t)p[18] << 8) | p[19];
}

/* ---- the peer table, read from Python ------------------------------------ */

typedef struct {
    PyObject *by_subnet;   /* borrowed from the table object for the call's duration */
    uint32_t mask;
    uint32_t *senders;     /* sorted node IPs (host order) */
    Py_ssize_t nsenders;
    PyObject *last_peer;   /* one-entry cache: peer object -> its address */
    struct sockaddr_in last_addr;
} table_t;

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static int parse_ip(PyObject *text, uint32_t *out)
{
    const char *s = PyUnicode_AsUTF8(text);
    struct in_addr a;
    if (s == NULL)
        return -1;
    if (inet_pton(AF_INET, s, &a) != 1) {
        PyErr_Format(PyExc_ValueError, "not an IPv4 address: %s", s);
        return -1;
    }
    *out = ntohl(a.s_addr);
    return 0;
}

/* Fill *t from a PeerTable; with_senders also builds the sorted sender array. */
static int table_open(PyObject *table, table_t *t, int with_senders)
{
    memset(t, 0, sizeof(*t));
    PyObject *mask = PyObject_GetAttrString(table, "mask");
    if (mask == NULL)
        return -1;
    t->mask = (uint32_t)PyLong_AsUnsignedLong(mask);
    Py_DECREF(mask);
    if (PyErr_Occurred())
        return -1;
    PyObject *by_subnet = PyObject_GetAttrString(table, "_by_subnet");
    if (by_subnet == NULL)
        return -1;
    if (!PyDict_Check(by_subnet)) {
        Py_DECREF(by_subnet);
        PyErr_SetString(PyExc_TypeError, "table._by_subnet is not a dict");
        return -1;
    }
    t->by_subnet = by_subnet; /* owned until table_close */
    if (!with_senders)
        return 0;
    PyObject *senders = PyObject_GetAttrString(table, "_senders");
    if (senders == NULL)
        return -1;
    if (!PyDict_Check(senders)) {
        Py_DECREF(senders);
        PyErr_SetString(PyExc_TypeError, "table._senders is not a dict");
        return -1;
    }
    Py_ssize_t n = PyDict_Size(senders), pos = 0, i = 0;
    PyObject *key, *value;
    t->senders = PyMem_Malloc(sizeof(uint32_t) * (n ? n : 1));
    if (t->senders == NULL) {
        Py_DECREF(senders);
        PyErr_NoMemory();
        return -1;
    }
    while (PyDict_Next(senders, &pos, &key, &value)) {
        if (parse_ip(key, &t->senders[i]) < 0) {
            Py_DECREF(senders);
            return -1;
        }
        i++;
    }
    Py_DECREF(senders);
    t->nsenders = i;
    qsort(t->senders, (size_t)i, sizeof(uint32_t), cmp_u32);
    return 0;
}

static void table_close(table_t *t)
{
    Py_XDECREF(t->by_subnet);
    PyMem_Free(t->senders);
    t->by_subnet = NULL;
    t->senders = NULL;
}

static int is_sender(const table_t *t, uint32_t ip)
{
    return t->nsenders && bsearch(&ip, t->senders, (size_t)t->nsenders, sizeof(uint32_t), cmp_u32) != NULL;
}

/* The peer (borrowed) owning dst, or NULL (with no error set) when none does. */
static PyObject *table_lookup(const table_t *t, uint32_t dst)
{
    PyObject *key = PyLong_FromUnsignedLong(dst & t->mask);
    if (key == NULL)
        return NULL;
    PyObject *peer = PyDict_GetItemWithError(t->by_subnet, key);
    Py_DECREF(key);
    return peer;
}

static int peer_addr(table_t *t, PyObject *peer, uint16_t port, struct sockaddr_in *out)
{
    if (peer != t->last_peer) {
        PyObject *ip = PyObject_GetAttrString(peer, "node_ip");
        uint32_t addr;
        if (ip == NULL)
            return -1;
        int rc = parse_ip(ip, &addr);
        Py_DECREF(ip);
        if (rc < 0)
            return -1;
        memset(&t->last_addr, 0, sizeof(t->last_addr));
        t->last_addr.sin_family = AF_INET;
        t->last_addr.sin_addr.s_addr = htonl(addr);
        t->last_peer = peer;
    }
    *out = t->last_addr;
    out->sin_port = htons(port);
    return 0;
}

/* Outbound verdict for one packet; *peer set (borrowed) on V_OK. -1 on a Python error. */
static int classify_out(const table_t *t, const unsigned char *p, Py_ssize_t n, PyObject **peer)
{
    int v = ipv4_check(p, n);
    if (v != V_OK)
        return v;
    *peer = table_lookup(t, ipv4_dst(p));
    if (*peer == NULL)
        return PyErr_Occurred() ? -1 : V_NO_LEASE;
    return V_OK;
}

static int classify_in(const table_t *t, const unsigned char *p, Py_ssize_t n, uint32_t sender,
                       uint32_t subnet, uint32_t mask)
{
    if (!is_sender(t, sender))
        return V_UNKNOWN_SENDER;
    int v = ipv4_check(p, n);
    if (v != V_OK)
        return v;
    if ((ipv4_dst(p) & mask) != subnet)
        return V_NOT_OUR_SUBNET;
    return V_OK;
}

/* ---- Python API: single-packet classification (parity with encap.udp) ---- */

static PyObject *py_classify_outbound(PyObject *self, PyObject *args)
{
    Py_buffer pkt;
    PyObject *table, *peer = NULL, *result = NULL;
    table_t t;
    if (!PyArg_ParseTuple(args, "y*O", &pkt, &table))
        return NULL;
    if (table_open(table, &t, 0) == 0) {
        int v = classify_out(&t, pkt.buf, pkt.len, &peer);
        if (v == V_OK) {
            PyObject *ip = PyObject_GetAttrString(peer, "node_ip");
            if (ip != NULL) {
                result = Py_BuildValue("(Oy#)", ip, (const char *)pkt.buf, pkt.len);
                Py_DECREF(ip);
            }
        } else if (v > 0) {
            result = PyUnicode_FromString(reason_names[v]);
        }
    }
    table_close(&t);
    PyBuffer_Release(&pkt);
    return result;
}

static PyObject *py_classify_inbound(PyObject *self, PyObject *args)
{
    Py_buffer pkt;
    PyObject *sender_text, *table, *result = NULL;
    unsigned long subnet, mask;
    uint32_t sender;
    table_t t;
    if (!PyArg_ParseTuple(args, "y*UkkO", &pkt, &sender_text, &subnet, &mask, &table))
        return NULL;
    if (table_open(table, &t, 1) == 0) {
        int v = parse_ip(sender_text, &sender) < 0 ? -1
              : classify_in(&t, pkt.buf, pkt.len, sender, (uint32_t)subnet, (uint32_t)mask);
        if (v == V_OK)
            result = PyBytes_FromStringAndSize(pkt.buf, pkt.len);
        else if (v > 0)
            result = PyUnicode_FromString(reason_names[v]);
    }
    table_close(&t);
    PyBuffer_Release(&pkt);
    return result;
}

/* ---- Python API: batched forwarding ---------------------------------------- */

static int batch_size(int requested)
{
    return requested < 1 ? 1 : (requested > BATCH ? BATCH : requested);
}

/*
 * forward_out(dev_fd, sock_fd, port, table, max_packets)
 *   -> (dev_packets, dev_bytes, tx_packets, tx_bytes, tx_dropped, tx_errors, read_errors, dropped)
 * dropped: [(reason, packet bytes), ...]
 */
static PyObject *py_forward_out(PyObject *self, PyObject *args)
{
    int dev_fd, sock_fd, port, requested;
    PyObject *table;
    if (!PyArg_ParseTuple(args, "iiiOi", &dev_fd, &sock_fd, &port, &table, &requested))
        return NULL;
    int n = batch_size(requested), got = 0;
    long read_errors = 0;
    batch_t *b = out_batch;

    Py_BEGIN_ALLOW_THREADS
    while (got < n) {
        ssize_t r = read(dev_fd, b->data[got], PKT_MAX);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                read_errors++;
            break;
        }
        b->len[got++] = r;
    }
    Py_END_ALLOW_THREADS

    table_t t;
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    struct sockaddr_in addrs[BATCH];
    int count = 0;
    long long dev_bytes = 0;
    PyObject *dropped = PyList_New(0);
    if (dropped == NULL)
        return NULL;
    if (table_open(table, &t, 0) < 0)
        goto fail;
    for (int i = 0; i < got; i++) {
        PyObject *peer = NULL;
        dev_bytes += b->len[i];
        int v = classify_out(&t, b->data[i], b->len[i], &peer);
        if (v < 0)
            goto fail;
        if (v != V_OK) {
            PyObject *item = Py_BuildValue("(sy#)", reason_names[v], (const char *)b->data[i], b->len[i]);
            if (item == NULL || PyList_Append(dropped, item) < 0) {
                Py_XDECREF(item);
                goto fail;
            }
            Py_DECREF(item);
            continue;
        }
        if (peer_addr(&t, peer, (uint16_t)port, &addrs[count]) < 0)
            goto fail;
        iovs[count].iov_base = b->data[i];
        iovs[count].iov_len = (size_t)b->len[i];
        memset(&msgs[count], 0, sizeof(msgs[count]));
        msgs[count].msg_hdr.msg_name = &addrs[count];
        msgs[count].msg_hdr.msg_namelen = sizeof(addrs[count]);
        msgs[count].msg_hdr.msg_iov = &iovs[count];
        msgs[count].msg_hdr.msg_iovlen = 1;
        count++;
    }
    table_close(&t);

    int sent = 0;
    long tx_dropped = 0, tx_errors = 0;
    long long tx_bytes = 0;
    Py_BEGIN_ALLOW_THREADS
    int at = 0;
    while (at < count) {
        int r = sendmmsg(sock_fd, msgs + at, (unsigned)(count - at), 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
                tx_dropped += count - at;   /* socket buffer full: UDP semantics, drop */
                break;
            }
            tx_errors++;                    /* this datagram failed (e.g. unreachable): skip it */
            at++;
            continue;
        }
        for (int i = at; i < at + r; i++)
            tx_bytes += (long long)iovs[i].iov_len;
        sent += r;
        at += r;
    }
    Py_END_ALLOW_THREADS

    PyObject *result = Py_BuildValue("(iLiLllLN)", got, dev_bytes, sent, tx_bytes, tx_dropped, tx_errors,
                                     (long long)read_errors, dropped);
    return result;

fail:
    table_close(&t);
    Py_DECREF(dropped);
    return NULL;
}

/*
 * forward_in(sock_fd, dev_fd, table, subnet_int, mask, max_packets)
 *   -> (rx_packets, rx_bytes, written, write_errors, drops)
 * drops: {reason: count}
 */
static PyObject *py_forward_in(PyObject *self, PyObject *args)
{
    int sock_fd, dev_fd, requested;
    unsigned long subnet, mask;
    PyObject *table;
    if (!PyArg_ParseTuple(args, "iiOkki", &sock_fd, &dev_fd, &table, &subnet, &mask, &requested))
        return NULL;
    int n = batch_size(requested), got;
    batch_t *b = in_batch;
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    struct sockaddr_in from[BATCH];
    memset(msgs, 0, sizeof(struct mmsghdr) * (size_t)n);
    for (int i = 0; i < n; i++) {
        iovs[i].iov_base = b->data[i];
        iovs[i].iov_len = PKT_MAX;
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    Py_BEGIN_ALLOW_THREADS
    do {
        got = recvmmsg(sock_fd, msgs, (unsigned)n, MSG_DONTWAIT, NULL);
    } while (got < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    if (got < 0)
        got = 0;   /* EAGAIN, or an error surfaced from ICMP: nothing to forward now */

    table_t t;
    if (table_open(table, &t, 1) < 0) {
        table_close(&t);
        return NULL;
    }
    long drops[V_COUNT] = {0};
    long long rx_bytes = 0;
    int accept[BATCH], naccept = 0;
    for (int i = 0; i < got; i++) {
        ssize_t len = (ssize_t)msgs[i].msg_len;
        rx_bytes += len;
        b->len[i] = len;
        uint32_t sender = ntohl(from[i].sin_addr.s_addr);
        int v = (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) ? V_TRUNCATED
              : classify_in(&t, b->data[i], len, sender, (uint32_t)subnet, (uint32_t)mask);
        if (v == V_OK)
            accept[naccept++] = i;
        else
            drops[v]++;
    }
    table_close(&t);

    int written = 0;
    long write_errors = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int k = 0; k < naccept; k++) {
        int i = accept[k];
        ssize_t w;
        do {
            w = write(dev_fd, b->data[i], (size_t)b->len[i]);
        } while (w < 0 && errno == EINTR);
        if (w < 0)
            write_errors++;
        else
            written++;
    }
    Py_END_ALLOW_THREADS

    PyObject *drop_dict = PyDict_New();
    if (drop_dict == NULL)
        return NULL;
    for (int v = 1; v < V_COUNT; v++) {
        if (!drops[v])
            continue;
        PyObject *count = PyLong_FromLong(drops[v]);
        if (count == NULL || PyDict_SetItemString(drop_dict, reason_names[v], count) < 0) {
            Py_XDECREF(count);
            Py_DECREF(drop_dict);
            return NULL;
        }
        Py_DECREF(count);
    }
    return Py_BuildValue("(iLilN)", got, rx_bytes, written, write_errors, drop_dict);
}

static PyMethodDef methods[] = {
    {"classify_outbound", py_classify_outbound, METH_VARARGS,
     "classify_outbound(pkt, table) -> (node_ip, pkt) | reason: encap.udp.outbound in C."},
    {"classify_inbound", py_classify_inbound, METH_VARARGS,
     "classify_inbound(dgram, sender_ip, subnet_int, mask, table) -> dgram | reason: encap.udp.inbound in C."},
    {"forward_out", py_forward_out, METH_VARARGS,
     "forward_out(dev_fd, sock_fd, port, table, max) -> (dev_packets, dev_bytes, tx_packets, tx_bytes, "
     "tx_dropped, tx_errors, read_errors, [(reason, packet), ...]): tun -> one sendmmsg."},
    {"forward_in", py_forward_in, METH_VARARGS,
     "forward_in(sock_fd, dev_fd, table, subnet_int, mask, max) -> (rx_packets, rx_bytes, written, "
     "write_errors, {reason: count}): one recvmmsg -> tun."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "overlayd._fastpath",
    "The UDP backend's data path in C, batched (see overlayd/dataplane/fast.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    out_batch = PyMem_RawMalloc(sizeof(batch_t));
    in_batch = PyMem_RawMalloc(sizeof(batch_t));
    if (out_batch == NULL || in_batch == NULL)
        return PyErr_NoMemory();
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "BATCH", BATCH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
