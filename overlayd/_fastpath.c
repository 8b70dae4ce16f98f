/*
 * overlayd._fastpath: the C twin of the UDP backend's data path.
 *
 * Design note. The pure Python code in overlayd/encap (ipv4.check,
 * udp.outbound, udp.inbound, receive.admit) is the reference and the fallback;
 * this module makes exactly the same decisions (tests/unit/test_fastpath_parity.py
 * holds it to that) and adds batching:
 *
 *   forward_out  up to BATCH non-blocking read()s from the tun, classify,
 *                ONE sendmmsg() for every accepted packet;
 *   forward_in   ONE recvmmsg() of up to BATCH datagrams, classify, write()
 *                the accepted ones to the tun.
 *
 * UDP GSO would batch further, but the kernel refuses it on a socket with
 * SO_NO_CHECK (checksum 0), which the design requires. The GIL is released
 * around every syscall and held while Python objects are touched. Dropped
 * outbound packets go back to Python with their reason, so the ICMP answers
 * and every counter name stay in one place (overlayd/dataplane).
 *
 * The peer table is an overlayd.encap.table.PeerTable; its `mask`,
 * `_by_subnet` (int -> Peer with .node_ip) and `_by_sender` (node IP str ->
 * {subnet int: Peer}, the subnets that node leases) are read once per call;
 * both are dicts, so every lookup is one hash probe however many peers
 * there are, and lookups by address are cached for the batch.
 * Packet buffers are per thread (a uvloop data plane runs in its own thread)
 * and only live for one call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64       /* packets per call, at most */
#define PKT_MAX 65535  /* bytes per packet: READ_SIZE in dataplane/loop.py; any UDP payload fits */

enum verdict {
    V_OK = 0, V_TRUNCATED, V_NOT_IPV4, V_BAD_IP_HEADER, V_NO_LEASE, V_UNKNOWN_SENDER, V_WRONG_SOURCE_PORT,
    V_NOT_OUR_SUBNET, V_TO_BROADCAST_ADDRESS, V_SPOOFED_SOURCE,
    V_COUNT
};

/* The values of overlayd.encap.drops.Drop, by verdict. */
static const char *const reason_names[V_COUNT] = {
    NULL, "truncated", "not_ipv4", "bad_ip_header", "no_lease", "unknown_sender", "wrong_source_port",
    "not_our_subnet", "to_broadcast_address", "spoofed_source",
};

/* ---- packet checks (the twins of overlayd.encap.ipv4) -------------------- */

/* ipv4.check: why p[0:n] is not a usable IPv4 packet, or V_OK. */
static int ipv4_check(const unsigned char *p, Py_ssize_t n)
{
    if (n < 20)
        return (n > 0 && (p[0] >> 4) != 4) ? V_NOT_IPV4 : V_TRUNCATED;
    if ((p[0] >> 4) != 4)
        return V_NOT_IPV4;
    unsigned ihl = (p[0] & 0x0Fu) * 4u;
    unsigned total = ((unsigned)p[2] << 8) | p[3];
    if (ihl < 20 || total < ihl)
        return V_BAD_IP_HEADER;
    if ((Py_ssize_t)total > n)
        return V_TRUNCATED;
    return V_OK;
}

/* The 4-byte big-endian address at a. */
static uint32_t ipv4_addr(const unsigned char *a)
{
    return ((uint32_t)a[0] << 24) | ((uint32_t)a[1] << 16) | ((uint32_t)a[2] << 8) | a[3];
}

/* ipv4.dst_int, for a checked packet. */
static uint32_t ipv4_dst(const unsigned char *p)
{
    return ipv4_addr(p + 16);
}

/* receive.admit for a checked packet from a node leasing `held` ({subnet int: Peer}):
 * V_OK or the drop, -1 on a Python error. */
static int admit_verdict(const unsigned char *p, PyObject *held, unsigned long long subnet,
                         unsigned long long mask)
{
    unsigned long long dst = ipv4_dst(p), host_bits = ~mask & 0xFFFFFFFFull;
    if ((dst & mask) != subnet)
        return V_NOT_OUR_SUBNET;
    if (host_bits > 1 && dst == (subnet | host_bits))
        return V_TO_BROADCAST_ADDRESS;
    PyObject *key = PyLong_FromUnsignedLongLong(ipv4_addr(p + 12) & mask);
    if (key == NULL)
        return -1;
    int leased = PyDict_Contains(held, key);
    Py_DECREF(key);
    return leased < 0 ? -1 : (leased ? V_OK : V_SPOOFED_SOURCE);
}

/* udp.inbound for p[0:n] from a node leasing `held` (NULL: no lease) whose
 * source port matched ours or not: V_OK or the drop, -1 on a Python error. */
static int inbound_verdict(const unsigned char *p, Py_ssize_t n, PyObject *held, int port_ok,
                           unsigned long long subnet, unsigned long long mask)
{
    if (held == NULL)
        return V_UNKNOWN_SENDER;
    if (!port_ok)
        return V_WRONG_SOURCE_PORT;
    int v = ipv4_check(p, n);
    if (v != V_OK)
        return v;
    return admit_verdict(p, held, subnet, mask);
}

/* ---- the peer table, read from Python ------------------------------------ */

typedef struct {
    PyObject *by_subnet;  /* PeerTable._by_subnet, a new reference */
    PyObject *by_sender;  /* PeerTable._by_sender, a new reference */
    unsigned long long mask;
} table_t;

static PyObject *dict_attr(PyObject *obj, const char *name)
{
    PyObject *d = PyObject_GetAttrString(obj, name);
    if (d != NULL && !PyDict_Check(d)) {
        PyErr_Format(PyExc_TypeError, "table.%s is not a dict", name);
        Py_CLEAR(d);
    }
    return d;
}

/* Read a PeerTable's attributes into *t; on failure *t holds nothing. */
static int table_open(PyObject *table, table_t *t)
{
    memset(t, 0, sizeof(*t));
    PyObject *mask = PyObject_GetAttrString(table, "mask");
    if (mask == NULL)
        return -1;
    t->mask = PyLong_AsUnsignedLongLongMask(mask);  /* int & mask, as Python does it */
    Py_DECREF(mask);
    if (PyErr_Occurred())
        return -1;
    t->by_subnet = dict_attr(table, "_by_subnet");
    t->by_sender = t->by_subnet ? dict_attr(table, "_by_sender") : NULL;
    if (t->by_sender == NULL) {
        Py_CLEAR(t->by_subnet);
        return -1;
    }
    return 0;
}

static void table_close(table_t *t)
{
    Py_CLEAR(t->by_subnet);
    Py_CLEAR(t->by_sender);
}

/* PeerTable.held_by: a new reference to the subnets node `ip` (a str) leases,
 * NULL with no error set when it leases none. */
static PyObject *table_held_by(const table_t *t, PyObject *ip)
{
    PyObject *held = PyDict_GetItemWithError(t->by_sender, ip);
    Py_XINCREF(held);
    return held;
}

/* PeerTable.lookup: a new reference to the peer owning dst; NULL with no
 * error set when no one leases it. */
static PyObject *table_lookup(const table_t *t, uint32_t dst)
{
    PyObject *key = PyLong_FromUnsignedLongLong(dst & t->mask);
    if (key == NULL)
        return NULL;
    PyObject *peer = PyDict_GetItemWithError(t->by_subnet, key);
    Py_DECREF(key);
    Py_XINCREF(peer);
    return peer;
}

/* ---- per-batch caches (a batch has at most BATCH distinct entries) --------- */

/* Outbound: destination subnet -> verdict and the peer's socket address. */
typedef struct {
    unsigned long long subnet;
    int verdict;      /* V_OK or V_NO_LEASE */
    int addr_ok;      /* node_ip was an IPv4 literal */
    struct sockaddr_in addr;
} route_t;

typedef struct {
    route_t r[BATCH];
    int n;
} routes_t;

/* The route for dst (cached for the batch); NULL on a Python error. */
static const route_t *route_for(const table_t *t, routes_t *cache, uint32_t dst, uint16_t port)
{
    unsigned long long subnet = dst & t->mask;
    for (int i = 0; i < cache->n; i++)
        if (cache->r[i].subnet == subnet)
            return &cache->r[i];
    PyObject *peer = table_lookup(t, dst);
    if (peer == NULL && PyErr_Occurred())
        return NULL;
    route_t *r = &cache->r[cache->n++];
    memset(r, 0, sizeof(*r));
    r->subnet = subnet;
    r->verdict = peer == NULL ? V_NO_LEASE : V_OK;
    if (peer == NULL)
        return r;
    PyObject *ip = PyObject_GetAttrString(peer, "node_ip");
    Py_DECREF(peer);
    if (ip == NULL) {
        cache->n--;
        return NULL;
    }
    const char *text = PyUnicode_Check(ip) ? PyUnicode_AsUTF8(ip) : NULL;
    if (text != NULL && inet_pton(AF_INET, text, &r->addr.sin_addr) == 1) {
        r->addr.sin_family = AF_INET;
        r->addr.sin_port = htons(port);
        r->addr_ok = 1;
    }
    Py_DECREF(ip);
    PyErr_Clear();  /* an unusable node_ip is a send error, as sendto() would make it */
    return r;
}

/* Inbound: sender address -> the subnets it leases. */
typedef struct {
    uint32_t ip[BATCH];
    PyObject *held[BATCH];  /* new references (NULL: no lease), released by senders_clear */
    int n;
} senders_t;

/* PeerTable.held_by for a received address (cached for the batch): 0 with *held
 * borrowed from the cache (NULL: no lease), -1 on a Python error. */
static int sender_held(const table_t *t, senders_t *cache, const struct sockaddr_in *from, socklen_t len,
                       PyObject **held)
{
    *held = NULL;
    if (len < (socklen_t)sizeof(*from) || from->sin_family != AF_INET)
        return 0;
    uint32_t ip = from->sin_addr.s_addr;
    for (int i = 0; i < cache->n; i++)
        if (cache->ip[i] == ip) {
            *held = cache->held[i];
            return 0;
        }
    char text[INET_ADDRSTRLEN];
    if (inet_ntop(AF_INET, &from->sin_addr, text, sizeof(text)) == NULL)
        return 0;
    PyObject *key = PyUnicode_FromString(text);  /* the str Python's recvfrom() would give */
    if (key == NULL)
        return -1;
    *held = table_held_by(t, key);
    Py_DECREF(key);
    if (*held == NULL && PyErr_Occurred())
        return -1;
    cache->ip[cache->n] = ip;
    cache->held[cache->n++] = *held;
    return 0;
}

static void senders_clear(senders_t *cache)
{
    for (int i = 0; i < cache->n; i++)
        Py_XDECREF(cache->held[i]);
    cache->n = 0;
}

/* ---- packet buffers, one set per thread ---------------------------------------- */

typedef struct {
    unsigned char data[BATCH][PKT_MAX];
    size_t len[BATCH];
} slots_t;

static pthread_key_t slots_key;

/* This thread's buffers (allocated on first use, freed when the thread ends); NULL + MemoryError. */
static slots_t *thread_slots(void)
{
    slots_t *s = pthread_getspecific(slots_key);
    if (s != NULL)
        return s;
    s = malloc(sizeof(*s));
    if (s == NULL || pthread_setspecific(slots_key, s) != 0) {
        free(s);
        PyErr_NoMemory();
        return NULL;
    }
    return s;
}

/* ---- result helpers ---------------------------------------------------------- */

/* {errno: count} for the n error codes in codes. */
static PyObject *errno_counts(const int *codes, int n)
{
    PyObject *d = PyDict_New();
    for (int i = 0; d != NULL && i < n; i++) {
        int seen = 0, count = 0;
        for (int j = 0; j < n; j++) {
            seen |= j < i && codes[j] == codes[i];
            count += codes[j] == codes[i];
        }
        if (seen)
            continue;
        PyObject *key = PyLong_FromLong(codes[i]), *value = PyLong_FromLong(count);
        if (key == NULL || value == NULL || PyDict_SetItem(d, key, value) < 0)
            Py_CLEAR(d);
        Py_XDECREF(key);
        Py_XDECREF(value);
    }
    return d;
}

/* {reason: count} for the non-zero drop counts. */
static PyObject *reason_counts(const long counts[V_COUNT])
{
    PyObject *d = PyDict_New();
    for (int v = 1; d != NULL && v < V_COUNT; v++) {
        if (counts[v] == 0)
            continue;
        PyObject *count = PyLong_FromLong(counts[v]);
        if (count == NULL || PyDict_SetItemString(d, reason_names[v], count) < 0)
            Py_CLEAR(d);
        Py_XDECREF(count);
    }
    return d;
}

static int clamp_batch(int requested)
{
    return requested < 1 ? 1 : (requested > BATCH ? BATCH : requested);
}

/* ---- Python API: one packet (parity with overlayd.encap.udp) ---------------- */

static PyObject *py_classify_outbound(PyObject *self, PyObject *args)
{
    PyObject *pkt, *table, *result = NULL;
    Py_buffer buf;
    table_t t;
    if (!PyArg_ParseTuple(args, "OO:classify_outbound", &pkt, &table))
        return NULL;
    if (PyObject_GetBuffer(pkt, &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    if (table_open(table, &t) == 0) {
        int v = ipv4_check(buf.buf, buf.len);
        PyObject *peer = NULL;
        if (v == V_OK && (peer = table_lookup(&t, ipv4_dst(buf.buf))) == NULL)
            v = PyErr_Occurred() ? -1 : V_NO_LEASE;
        if (peer != NULL) {
            PyObject *ip = PyObject_GetAttrString(peer, "node_ip");
            result = ip ? PyTuple_Pack(2, ip, pkt) : NULL;
            Py_XDECREF(ip);
            Py_DECREF(peer);
        } else if (v > 0) {
            result = PyUnicode_FromString(reason_names[v]);
        }
        table_close(&t);
    }
    PyBuffer_Release(&buf);
    return result;
}

static PyObject *py_classify_inbound(PyObject *self, PyObject *args)
{
    PyObject *dgram, *sender_ip, *table, *result = NULL;
    int sender_port, port;
    unsigned long long subnet, mask;
    Py_buffer buf;
    table_t t;
    if (!PyArg_ParseTuple(args, "O(Oi)iKKO:classify_inbound", &dgram, &sender_ip, &sender_port, &port,
                          &subnet, &mask, &table))
        return NULL;
    if (PyObject_GetBuffer(dgram, &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    if (table_open(table, &t) == 0) {
        PyObject *held = table_held_by(&t, sender_ip);
        if (held != NULL || !PyErr_Occurred()) {
            int v = inbound_verdict(buf.buf, buf.len, held, sender_port == port, subnet, mask);
            if (v >= 0)
                result = v == V_OK ? Py_NewRef(dgram) : PyUnicode_FromString(reason_names[v]);
        }
        Py_XDECREF(held);
        table_close(&t);
    }
    PyBuffer_Release(&buf);
    return result;
}

/* ---- Python API: batches ---------------------------------------------------------- */

/* The outbound batch after classification: what one sendmmsg() gets. */
typedef struct {
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    routes_t routes;   /* msgs point at these addresses */
    int count;         /* accepted packets, msgs[0:count] */
    int errs[BATCH];   /* errno of every failed send (0: unusable peer address) */
    int nerr;
} sends_t;

/* Classify the nread packets in s against table: accepted ones into *out,
 * dropped ones appended to `dropped` as (reason, bytes). -1 on a Python error. */
static int prepare_sends(PyObject *table, slots_t *s, int nread, uint16_t port, sends_t *out,
                         PyObject *dropped)
{
    table_t t;
    if (table_open(table, &t) < 0)
        return -1;
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < nread; i++) {
        const unsigned char *p = s->data[i];
        Py_ssize_t len = (Py_ssize_t)s->len[i];
        const route_t *r = NULL;
        int v = ipv4_check(p, len);
        if (v == V_OK) {
            if ((r = route_for(&t, &out->routes, ipv4_dst(p), port)) == NULL)
                goto fail;
            v = r->verdict;
        }
        if (v != V_OK) {
            PyObject *item = Py_BuildValue("(sy#)", reason_names[v], (const char *)p, len);
            int rc = item ? PyList_Append(dropped, item) : -1;
            Py_XDECREF(item);
            if (rc < 0)
                goto fail;
        } else if (!r->addr_ok) {
            out->errs[out->nerr++] = 0;
        } else {
            struct msghdr *h = &out->msgs[out->count].msg_hdr;
            out->iovs[out->count].iov_base = (void *)p;
            out->iovs[out->count].iov_len = (size_t)len;
            h->msg_name = (void *)&r->addr;
            h->msg_namelen = sizeof(r->addr);
            h->msg_iov = &out->iovs[out->count];
            h->msg_iovlen = 1;
            out->count++;
        }
    }
    table_close(&t);
    return 0;
fail:
    table_close(&t);
    return -1;
}

static PyObject *py_forward_out(PyObject *self, PyObject *args)
{
    int dev_fd, sock_fd, port, requested;
    PyObject *table;
    if (!PyArg_ParseTuple(args, "iiiOi:forward_out", &dev_fd, &sock_fd, &port, &table, &requested))
        return NULL;
    if (port < 0 || port > 65535)
        return PyErr_Format(PyExc_ValueError, "port %d is outside 0..65535", port);
    slots_t *s = thread_slots();
    if (s == NULL)
        return NULL;
    int n = clamp_batch(requested), nread = 0, read_errors = 0;
    long long read_bytes = 0;

    Py_BEGIN_ALLOW_THREADS
    while (nread < n) {
        ssize_t r = read(dev_fd, s->data[nread], PKT_MAX);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                read_errors++;  /* counted; the reader is level-triggered, so it comes back */
            break;
        }
        s->len[nread++] = (size_t)r;
        read_bytes += r;
    }
    Py_END_ALLOW_THREADS

    sends_t *out = PyMem_Malloc(sizeof(*out));
    PyObject *dropped = out ? PyList_New(0) : PyErr_NoMemory();
    if (dropped == NULL || prepare_sends(table, s, nread, (uint16_t)port, out, dropped) < 0) {
        PyMem_Free(out);
        Py_XDECREF(dropped);
        return NULL;
    }

    int sent = 0, tx_dropped = 0;
    long long sent_bytes = 0;
    Py_BEGIN_ALLOW_THREADS
    int at = 0;
    while (at < out->count) {
        int r = sendmmsg(sock_fd, out->msgs + at, (unsigned)(out->count - at), 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                tx_dropped += out->count - at;  /* socket buffer full: UDP semantics, drop the rest */
                break;
            }
            out->errs[out->nerr++] = errno;   /* this datagram failed: count it, send the others */
            at++;
            continue;
        }
        for (int i = at; i < at + r; i++)
            sent_bytes += (long long)out->iovs[i].iov_len;
        sent += r;
        at += r;
    }
    Py_END_ALLOW_THREADS

    PyObject *send_errors = errno_counts(out->errs, out->nerr);
    PyMem_Free(out);
    if (send_errors == NULL) {
        Py_DECREF(dropped);
        return NULL;
    }
    return Py_BuildValue("(iLiiLiNN)", nread, read_bytes, read_errors, sent, sent_bytes, tx_dropped,
                         send_errors, dropped);
}

/* Classify the got datagrams in s (senders in from, lengths in msgs): store
 * the indexes of the accepted ones in accept, count the others in drops.
 * Returns the number accepted, -1 on a Python error. */
static int accept_datagrams(PyObject *table, slots_t *s, const struct mmsghdr *msgs,
                            const struct sockaddr_in *from, int got, unsigned long long subnet,
                            unsigned long long mask, uint16_t port, int *accept, long drops[V_COUNT])
{
    senders_t senders = {.n = 0};
    table_t t;
    int naccept = 0;
    if (table_open(table, &t) < 0)
        return -1;
    for (int i = 0; i < got; i++) {
        PyObject *held;
        s->len[i] = msgs[i].msg_len;
        int v = sender_held(&t, &senders, &from[i], msgs[i].msg_hdr.msg_namelen, &held);
        if (v == 0)
            v = inbound_verdict(s->data[i], (Py_ssize_t)s->len[i], held, ntohs(from[i].sin_port) == port,
                                subnet, mask);
        if (v < 0) {
            naccept = -1;
            break;
        }
        if (v == V_OK)
            accept[naccept++] = i;
        else
            drops[v]++;
    }
    senders_clear(&senders);
    table_close(&t);
    return naccept;
}

static PyObject *py_forward_in(PyObject *self, PyObject *args)
{
    int sock_fd, dev_fd, port, requested;
    unsigned long long subnet, mask;
    PyObject *table;
    if (!PyArg_ParseTuple(args, "iiOKKii:forward_in", &sock_fd, &dev_fd, &table, &subnet, &mask, &port,
                          &requested))
        return NULL;
    if (port < 0 || port > 65535)
        return PyErr_Format(PyExc_ValueError, "port %d is outside 0..65535", port);
    slots_t *s = thread_slots();
    if (s == NULL)
        return NULL;
    int n = clamp_batch(requested), got = 0, recv_errors = 0;
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    struct sockaddr_in from[BATCH];
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < n; i++) {
        iovs[i].iov_base = s->data[i];
        iovs[i].iov_len = PKT_MAX;
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }

    Py_BEGIN_ALLOW_THREADS
    while (recv_errors < n) {
        int r = recvmmsg(sock_fd, msgs, (unsigned)(n - recv_errors), MSG_DONTWAIT, NULL);
        if (r >= 0) {
            got = r;
            break;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        if (errno != EINTR)
            recv_errors++;  /* e.g. ECONNREFUSED surfaced from ICMP: costs one slot, as in Python */
    }
    Py_END_ALLOW_THREADS

    long drops[V_COUNT] = {0};
    long long rx_bytes = 0;
    int accept[BATCH];
    int naccept = accept_datagrams(table, s, msgs, from, got, subnet, mask, (uint16_t)port, accept, drops);
    if (naccept < 0)
        return NULL;
    for (int i = 0; i < got; i++)
        rx_bytes += (long long)s->len[i];

    int written = 0, errs[BATCH], nerr = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int k = 0; k < naccept; k++) {
        ssize_t w;
        do {
            w = write(dev_fd, s->data[accept[k]], s->len[accept[k]]);
        } while (w < 0 && errno == EINTR);
        if (w < 0)
            errs[nerr++] = errno;  /* EIO: link down; EINVAL: malformed for the device */
        else
            written++;
    }
    Py_END_ALLOW_THREADS

    PyObject *write_errors = errno_counts(errs, nerr);
    PyObject *drop_counts = write_errors ? reason_counts(drops) : NULL;
    if (drop_counts == NULL) {
        Py_XDECREF(write_errors);
        return NULL;
    }
    return Py_BuildValue("(iLiiNN)", got, rx_bytes, recv_errors, written, write_errors, drop_counts);
}

static PyMethodDef methods[] = {
    {"classify_outbound", py_classify_outbound, METH_VARARGS,
     "classify_outbound(pkt, table) -> (node_ip, pkt) | reason\n\n"
     "overlayd.encap.udp.outbound in C: the owning peer's node IP and the payload, or the drop reason."},
    {"classify_inbound", py_classify_inbound, METH_VARARGS,
     "classify_inbound(dgram, (sender_ip, sender_port), port, subnet_int, mask, table) -> dgram | reason\n\n"
     "overlayd.encap.udp.inbound in C: the packet to write to the tun, or the drop reason."},
    {"forward_out", py_forward_out, METH_VARARGS,
     "forward_out(dev_fd, sock_fd, port, table, max_packets)\n"
     "    -> (read, read_bytes, read_errors, sent, sent_bytes, tx_dropped, {errno: n}, [(reason, pkt)])\n\n"
     "Read up to max_packets (at most BATCH) packets from the non-blocking tun fd, send the "
     "accepted ones to node_ip:port with one sendmmsg(), and return the counts, the send "
     "failures by errno (0: unusable peer address) and the dropped packets with their reason."},
    {"forward_in", py_forward_in, METH_VARARGS,
     "forward_in(sock_fd, dev_fd, table, subnet_int, mask, port, max_packets)\n"
     "    -> (received, received_bytes, recv_errors, written, {errno: n}, {reason: n})\n\n"
     "Receive up to max_packets (at most BATCH) datagrams with one recvmmsg(MSG_DONTWAIT), "
     "write the accepted ones (from peers' port `port`) to the tun fd, and return the counts, the write failures by "
     "errno and the drops by reason."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "overlayd._fastpath",
    "The UDP backend's data path in C, batched (see overlayd/dataplane/fast.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    static int key_made;
    if (!key_made) {
        if (pthread_key_create(&slots_key, free) != 0)
            return PyErr_NoMemory();
        key_made = 1;
    }
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "BATCH", BATCH) < 0)
        Py_CLEAR(m);
    return m;
}
