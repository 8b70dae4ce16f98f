/*
 * overlayd._fastpath: the userspace backends' data plane in C.
 *
 * Design note. The pure Python code in overlayd/encap (ipv4.check,
 * udp.outbound/inbound, receive.admit, gso.segment/coalesce, and for VXLAN
 * ether.tap_outbound/tap_inbound/complete_partial_checksum and
 * vxlan.encapsulate/decapsulate) is the reference; the C parts make the same
 * decisions, and the parity tests (tests/unit/test_fastpath_parity.py,
 * test_gso_parity.py) hold them to it through classify_outbound,
 * classify_inbound, classify_tap_outbound, classify_vxlan_inbound,
 * complete_partial_checksum, segment and coalesce below, which run the very
 * functions the engine runs.
 *
 * Userspace VXLAN (csrc/vxlan.c) runs on the same engine: an Engine made
 * with vni and own_mac reads frames from a tap instead of packets from a
 * tun. Each read lands VXLAN_HDR_LEN bytes into its slot, so the header is
 * written in front of the frame and the destination MAC rewritten in place
 * (no copy); the table entries carry the peers' VtepMACs (a peer without one
 * is "no lease", as in Python). Inbound, the VXLAN header and VNI, our MAC
 * (or broadcast), admit() and the sender's VtepMAC are checked, and a
 * CHECKSUM_PARTIAL inner checksum is completed in place before the frame is
 * written; any source port is accepted (kernel VTEPs vary it per flow).
 * Everything else (threads, batching, table swaps, counters, ICMP answers)
 * is shared with the UDP wire, superpackets included: with vnet_hdr the tap
 * is segmented and coalesced like the tun, the Ethernet header (engine_t.l2)
 * in front of each segment and run (segment_frame, coalesce_frames).
 *
 * A kernel VTEP's superpackets (vxlan_tap_frame). With transmit checksum
 * offload on, a kernel VTEP over a virtual underlay sends a whole TCP GSO
 * skb in one datagram: an inner IP packet up to 64 KB, past the MTU, its
 * TCP checksum partial. A plain tap would take it, but the kernel then
 * forwards a non-GSO packet larger than cni0's MTU: dropped, with an ICMP
 * "fragmentation needed" back (that is why such transfers stalled). On a
 * vnet_hdr tap the engine writes it whole as one GSO write (NEEDS_CSUM, the
 * checksum left partial, gso_size the MSS that fits the tap's MTU) and the
 * kernel cuts it where it must, as its own GRO'd packets are; only after
 * every check a frame passes, and only TCP/IPv4 whose checksum field holds
 * the pseudo-header sum. Anything else past the MTU is dropped as
 * bad_ip_header. The Python plane cuts the same packet into the segments
 * the kernel makes of the GSO write (ether.cut_superpacket); the parity
 * tests compare the two through gso.segment_frame. The receive buffers hold
 * any datagram (PKT_MAX plus the VXLAN and Ethernet headers).
 *
 * Threads (csrc/engine.c). Engine.start() makes two threads, one per
 * direction, that own the hot loop and never take the GIL: tun -> UDP blocks
 * in poll() on the tun, reads up to BATCH packets, classifies them, cuts
 * superpackets into segments and sends everything with sendmmsg(); UDP -> tun
 * blocks in poll() on the socket, takes up to BATCH datagrams with one
 * recvmmsg(), classifies them, coalesces TCP runs and writes them. Both also
 * poll an eventfd that Engine.stop() signals before joining them, so a stop
 * never waits for traffic; an idle thread still turns every 500 ms and
 * records when (last_beat(), for the watchdog). A thread that cannot go on
 * (its fd closed, the tun deleted, no memory) records why and signals a
 * second eventfd (notify_fd) that Python watches; Python also takes from it
 * the packets dropped for NO_LEASE, whose ICMP answers (rate-limited) stay in
 * Python. Counters are per thread, written by their thread only with relaxed
 * atomics, summed when Python reads them; their names are the Python plane's.
 *
 * The peer table (csrc/table.c) is an immutable hash built from the Python
 * PeerTable by Engine.set_peers() (under the GIL, on the control loop) and
 * swapped in under a mutex; each thread takes a reference to the current table
 * for one batch (the mutex is held for that pointer copy only), so the old one
 * is freed by whoever drops the last reference: no lookup ever sees a
 * half-applied change, and lookups are one hash probe at any size.
 *
 * Superpackets (csrc/gso.c). With a tun opened with IFF_VNET_HDR and
 * TUNSETOFFLOAD (CSUM, TSO4, TSO6), a read gives a virtio_net_hdr and up to
 * 64 KB of one TCP flow; it is cut into MSS-sized IPv4 packets (IP length, ID
 * and checksum, TCP sequence, flags and checksum fixed per segment; each is
 * sent as two iovecs, its headers written to a small arena and its payload
 * where the read put it, so the kernel's copy is the only one), or has
 * its partial checksum completed, since checksum 0 on the wire means peers
 * must receive finished packets. On receive, consecutive segments of one flow
 * that the kernel's GRO would merge, each with verified IP and TCP checksums,
 * are written as one superpacket with a GSO header (NEEDS_CSUM, the TCP
 * checksum field holding the pseudo-header sum); anything else is written
 * alone with an empty header. A segment that came in a UDP_GRO buffer has
 * its TCP checksum taken as verified: the kernel merges only datagrams whose
 * non-zero UDP checksum (covering the whole inner packet) it validated.
 *
 * UDP runs (issue 20). With udp_runs (FastDataPlane probes the device:
 * TUNSETOFFLOAD knows USO on Linux >= 6.2), consecutive datagrams of one UDP
 * flow accepted from the wire are written as one UDP_L4 GSO write too (gso.c's
 * gro_run and gro_header, gso.coalesce(udp=True) in Python): the kernel routes,
 * filters and bridges the run once and cuts it back into the very datagrams at
 * the receiving socket (udp_rcv_segment), where a 64-byte flood used to cross
 * the forwarding path once per datagram. Only what the cut reproduces joins a
 * run: same addresses, ports, TTL, TOS and DF, IPv4 IDs counting up by one,
 * equal sizes but the last, a non-zero UDP checksum, verified like TCP's.
 *
 * Checksummed mode (udp_gso, the daemon's --udp-checksum). Checksum 0 stays
 * the default wire format, but it rules out the kernel's UDP offloads: it
 * refuses UDP_SEGMENT on an SO_NO_CHECK socket and never GRO-merges
 * checksum-0 datagrams, so every datagram crosses the stack alone. With
 * udp_gso the socket keeps its checksums and a superpacket's segments (equal
 * sizes but the last) leave in as few sendmsg()s as the kernel takes
 * (GSO_SEGS_MAX segments, 64 KB), each with a UDP_SEGMENT cmsg, through the
 * same sendmmsg() as single datagrams. The receiver of the UDP wire turns
 * UDP_GRO on, whatever its own mode (the VXLAN wire does not: see
 * engine_start): a checksummed peer's sends then arrive as one
 * buffer with the segment size in a cmsg, split here into the datagrams they
 * were and classified one by one exactly like single ones (checksum-0
 * datagrams arrive alone, as before), so both wire forms get the same
 * verdicts. tx_gso_sends and rx_coalesced count the offloaded sends and the
 * split buffers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <string.h>
#include <sys/socket.h>

#ifndef SO_NO_CHECK
#define SO_NO_CHECK 11
#endif

#include "csrc/engine.h"
#include "csrc/gso.h"
#include "csrc/packet.h"
#include "csrc/table.h"
#include "csrc/vxlan.h"

const char *const reason_names[V_COUNT] = {
    NULL, "truncated", "not_ipv4", "bad_ip_header", "no_lease", "unknown_sender", "wrong_source_port",
    "not_our_subnet", "to_broadcast_address", "spoofed_source", "wrong_source_mac", "bad_vxlan", "wrong_vni",
    "not_for_us", "too_big",
};

/* ---- the peer table, built from a Python PeerTable ------------------------------ */

/* A node IP as Python holds it, an IPv4 or IPv6 address: *ip (IPv4 as node_of_ipv4) and whether it
 * parsed and is canonical, i.e. written as a received address is (inet_ntop's form; an IPv4-mapped
 * IPv6 address never is: no socket of ours receives from one, see sender_of in csrc/engine.c). */
static void parse_ip(PyObject *text, addr6_t *ip, int *send_ok, int *canonical)
{
    const char *s = PyUnicode_Check(text) ? PyUnicode_AsUTF8(text) : NULL;
    struct in_addr a;
    struct in6_addr a6;
    char back[INET6_ADDRSTRLEN];
    *ip = (addr6_t){0, 0};
    *send_ok = *canonical = 0;
    if (s != NULL && inet_pton(AF_INET, s, &a) == 1) {
        *ip = node_of_ipv4(ntohl(a.s_addr));
        *send_ok = 1;
        *canonical = inet_ntop(AF_INET, &a, back, sizeof(back)) != NULL && strcmp(back, s) == 0;
    } else if (s != NULL && inet_pton(AF_INET6, s, &a6) == 1) {
        *ip = addr6_masked(a6.s6_addr, (addr6_t){~0ull, ~0ull});
        *send_ok = 1;
        *canonical = !(ip->hi == 0 && ip->lo >> 32 == 0xFFFF) && inet_ntop(AF_INET6, &a6, back, sizeof(back)) != NULL
                     && strcmp(back, s) == 0;
    }
    PyErr_Clear();  /* an unusable node_ip is a send error, as sendto() would make it */
}

/* A Peer's vtep_mac: 0 with *mac NULL (None) or set (6 bytes), -1 with an exception set. */
static int peer_mac(PyObject *peer, const unsigned char **mac, unsigned char *buf)
{
    PyObject *v = PyObject_GetAttrString(peer, "vtep_mac");
    *mac = NULL;
    if (v == NULL)
        return -1;
    int rc = 0;
    if (v != Py_None) {
        if (!PyBytes_Check(v) || PyBytes_GET_SIZE(v) != MAC_LEN) {
            PyErr_SetString(PyExc_ValueError, "a Peer's vtep_mac is None or 6 bytes");
            rc = -1;
        } else {
            memcpy(buf, PyBytes_AS_STRING(v), MAC_LEN);
            *mac = buf;
        }
    }
    Py_DECREF(v);
    return rc;
}

/* A Python int's low 128 bits as an addr6_t: 0, or -1 with an exception set. */
static int addr6_from(PyObject *v, addr6_t *a)
{
    PyObject *sixty_four = PyLong_FromLong(64);
    PyObject *hi = sixty_four ? PyNumber_Rshift(v, sixty_four) : NULL;
    a->lo = PyLong_AsUnsignedLongLongMask(v);
    a->hi = hi && !PyErr_Occurred() ? PyLong_AsUnsignedLongLongMask(hi) : 0;
    Py_XDECREF(hi);
    Py_XDECREF(sixty_four);
    return PyErr_Occurred() ? -1 : 0;
}

/* Add the peers of by_subnet (IPv4 keys, or IPv6 ones when v6) to t, addresses on port: 0, or -1 with an
 * exception set. */
static int add_peers(peer_table_t *t, PyObject *by_subnet, int v6, uint16_t port)
{
    Py_ssize_t pos = 0;
    PyObject *key, *peer;
    while (PyDict_Next(by_subnet, &pos, &key, &peer)) {
        addr6_t subnet6 = {0, 0}, ip;
        uint32_t subnet = 0;
        if (v6 ? addr6_from(key, &subnet6) < 0 : (subnet = (uint32_t)PyLong_AsUnsignedLongLongMask(key),
                                                   PyErr_Occurred() != NULL))
            return -1;
        PyObject *node_ip = PyObject_GetAttrString(peer, "node_ip");
        if (node_ip == NULL)
            return -1;
        int send_ok, canonical;
        parse_ip(node_ip, &ip, &send_ok, &canonical);
        Py_DECREF(node_ip);
        unsigned char buf[MAC_LEN];
        const unsigned char *mac;
        if (peer_mac(peer, &mac, buf) < 0)
            return -1;
        if (v6)
            table_add6(t, subnet6, ip, send_ok, canonical, port, mac);
        else
            table_add(t, subnet, ip, send_ok, canonical, port, mac);
    }
    return 0;
}

/* A C table holding the PeerTable's peers (its `mask` and `_by_subnet`: int -> Peer with .node_ip
 * and .vtep_mac; `mask6` and `_by_subnet6` alike for IPv6), addresses on port; NULL with an exception
 * set. */
static peer_table_t *table_from(PyObject *table, uint16_t port)
{
    PyObject *mask = PyObject_GetAttrString(table, "mask");
    PyObject *mask6 = mask ? PyObject_GetAttrString(table, "mask6") : NULL;
    PyObject *by_subnet = mask6 ? PyObject_GetAttrString(table, "_by_subnet") : NULL;
    PyObject *by_subnet6 = by_subnet ? PyObject_GetAttrString(table, "_by_subnet6") : NULL;
    peer_table_t *t = NULL;
    if (by_subnet6 == NULL || !PyDict_Check(by_subnet) || !PyDict_Check(by_subnet6)) {
        if (by_subnet6 != NULL)
            PyErr_SetString(PyExc_TypeError, "table._by_subnet and _by_subnet6 are dicts");
        goto done;
    }
    uint32_t m = (uint32_t)PyLong_AsUnsignedLongLongMask(mask);
    addr6_t m6;
    if (PyErr_Occurred() || addr6_from(mask6, &m6) < 0)
        goto done;
    if ((t = table_new(m, m6, (size_t)(PyDict_Size(by_subnet) + PyDict_Size(by_subnet6)))) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (add_peers(t, by_subnet, 0, port) < 0 || add_peers(t, by_subnet6, 1, port) < 0) {
        table_unref(t);
        t = NULL;
    }
done:
    Py_XDECREF(mask);
    Py_XDECREF(mask6);
    Py_XDECREF(by_subnet);
    Py_XDECREF(by_subnet6);
    return t;
}

/* An optional IPv6 subnet argument: its network address, when there is one (has). */
typedef struct {
    addr6_t subnet6;
    int has;
} subnet6_arg_t;

/* An "O&" converter for an IPv6 subnet: None (no IPv6 subnet) or an int, into a subnet6_arg_t. */
static int subnet6_arg(PyObject *obj, void *out)
{
    subnet6_arg_t *a = out;
    a->has = obj != Py_None;
    a->subnet6 = (addr6_t){0, 0};
    if (!a->has)
        return 1;
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "an IPv6 subnet is an int or None, not %.100s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    return addr6_from(obj, &a->subnet6) == 0;
}

/* ---- Python API: one packet (parity with overlayd.encap) ------------------------ */

/* r's subnet as the Python table's key (in _by_subnet6 when v6). */
static PyObject *route_key(const route_t *r, int v6)
{
    if (!v6)
        return PyLong_FromUnsignedLong(r->subnet);
    PyObject *hi = PyLong_FromUnsignedLongLong(r->subnet6.hi), *lo = PyLong_FromUnsignedLongLong(r->subnet6.lo);
    PyObject *sixty_four = PyLong_FromLong(64);
    PyObject *shifted = hi && sixty_four ? PyNumber_Lshift(hi, sixty_four) : NULL;
    PyObject *key = shifted && lo ? PyNumber_Or(shifted, lo) : NULL;
    Py_XDECREF(hi);
    Py_XDECREF(lo);
    Py_XDECREF(sixty_four);
    Py_XDECREF(shifted);
    return key;
}

/* (node_ip, payload) for an accepted outbound packet routed by r (an IPv6 route when v6): the verdict is
 * the C table's, the node IP as the Python table spells it. */
static PyObject *routed(PyObject *table, const route_t *r, int v6, PyObject *payload)
{
    PyObject *by_subnet = PyObject_GetAttrString(table, v6 ? "_by_subnet6" : "_by_subnet");
    PyObject *key = route_key(r, v6);
    PyObject *peer = by_subnet && key ? PyDict_GetItemWithError(by_subnet, key) : NULL;
    PyObject *ip = peer ? PyObject_GetAttrString(peer, "node_ip") : NULL;
    PyObject *result = ip ? PyTuple_Pack(2, ip, payload) : NULL;
    Py_XDECREF(ip);
    Py_XDECREF(key);
    Py_XDECREF(by_subnet);
    return result;
}

static PyObject *py_classify_outbound(PyObject *self, PyObject *args)
{
    PyObject *pkt, *table, *mtu_obj = Py_None, *result = NULL;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "OO|O:classify_outbound", &pkt, &table, &mtu_obj))
        return NULL;
    unsigned long mtu = mtu_obj == Py_None ? 0 : PyLong_AsUnsignedLong(mtu_obj);
    if (PyErr_Occurred())
        return NULL;
    peer_table_t *t = table_from(table, 0);
    if (t == NULL)
        return NULL;
    if (PyObject_GetBuffer(pkt, &buf, PyBUF_SIMPLE) == 0) {
        const route_t *r;
        int v = table_outbound(t, buf.buf, (size_t)buf.len, (unsigned)mtu, &r);
        result = v != V_OK ? PyUnicode_FromString(reason_names[v])
                           : routed(table, r, is_ipv6(buf.buf, (size_t)buf.len, t->has6), pkt);
        PyBuffer_Release(&buf);
    }
    table_unref(t);
    return result;
}

static PyObject *py_classify_inbound(PyObject *self, PyObject *args)
{
    PyObject *dgram, *sender_ip, *table, *result = NULL;
    int sender_port, port;
    unsigned long long subnet, mask;
    subnet6_arg_t own6 = {{0, 0}, 0};
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "O(Oi)iKKO|O&:classify_inbound", &dgram, &sender_ip, &sender_port, &port,
                          &subnet, &mask, &table, subnet6_arg, &own6))
        return NULL;
    peer_table_t *t = table_from(table, 0);
    if (t == NULL)
        return NULL;
    if (PyObject_GetBuffer(dgram, &buf, PyBUF_SIMPLE) == 0) {
        addr6_t ip;
        int parsed, canonical;
        parse_ip(sender_ip, &ip, &parsed, &canonical);  /* a received address is always canonical */
        int v = table_inbound(t, buf.buf, (size_t)buf.len, canonical, ip, sender_port == port, (uint32_t)subnet,
                              (uint32_t)mask, own6.has ? &own6.subnet6 : NULL);
        result = v == V_OK ? Py_NewRef(dgram) : PyUnicode_FromString(reason_names[v]);
        PyBuffer_Release(&buf);
    }
    table_unref(t);
    return result;
}

/* ---- Python API: userspace VXLAN (parity with overlayd.dataplane.codecs.VxlanCodec) -- */

#define VNI_MAX 0xFFFFFF

/* An "O&" converter: a VNI argument, an int in 0..VNI_MAX (encap.vxlan.VNI_MAX), into *(uint32_t *)out.
 * Anything else is refused whole (TypeError, or ValueError however large or negative the int), never
 * masked or wrapped into range. */
static int vni_arg(PyObject *obj, void *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "a VNI is an int, not %.100s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred())
        return 0;
    if (overflow || v < 0 || v > VNI_MAX) {
        PyErr_Format(PyExc_ValueError, "VNI %S is outside 0..%d", obj, VNI_MAX);
        return 0;
    }
    *(uint32_t *)out = (uint32_t)v;
    return 1;
}

static PyObject *py_classify_tap_outbound(PyObject *self, PyObject *args)
{
    Py_buffer fb;
    uint32_t vni;
    PyObject *table, *result = NULL;
    if (!PyArg_ParseTuple(args, "y*O&O:classify_tap_outbound", &fb, vni_arg, &vni, &table))
        return NULL;
    peer_table_t *t = table_from(table, 0);
    unsigned char *buf = t ? PyMem_Malloc(VXLAN_HDR_LEN + (size_t)fb.len) : NULL;
    if (t != NULL && buf == NULL)
        PyErr_NoMemory();
    if (buf != NULL) {  /* the engine's slot: headroom for the VXLAN header, then the frame */
        unsigned char *f = buf + VXLAN_HDR_LEN;
        memcpy(f, fb.buf, (size_t)fb.len);
        const route_t *r;
        int v = vxlan_outbound(t, f, (size_t)fb.len, &r);
        if (v != V_OK) {
            result = PyUnicode_FromString(reason_names[v]);
        } else {
            PyObject *payload = PyBytes_FromStringAndSize((const char *)vxlan_encapsulate(f, r, vni),
                                                          VXLAN_HDR_LEN + fb.len);
            result = payload ? routed(table, r, is_ipv6(f + ETH_HDR_LEN, (size_t)fb.len - ETH_HDR_LEN, t->has6),
                                      payload) : NULL;  /* V_OK: the frame's family (vxlan_outbound) */
            Py_XDECREF(payload);
        }
    }
    PyMem_Free(buf);
    table_unref(t);
    PyBuffer_Release(&fb);
    return result;
}

static PyObject *py_classify_vxlan_inbound(PyObject *self, PyObject *args)
{
    Py_buffer db, mb;
    PyObject *sender_ip, *table, *result = NULL;
    uint32_t vni;
    unsigned long mtu = PKT_MAX;
    unsigned long long subnet, mask;
    subnet6_arg_t own6 = {{0, 0}, 0};
    if (!PyArg_ParseTuple(args, "y*OO&y*KKO|kO&:classify_vxlan_inbound", &db, &sender_ip, vni_arg, &vni, &mb,
                          &subnet, &mask, &table, &mtu, subnet6_arg, &own6))
        return NULL;
    peer_table_t *t = NULL;
    unsigned char *d = NULL;
    if (mb.len != MAC_LEN)
        PyErr_SetString(PyExc_ValueError, "own_mac is 6 bytes");
    else if (mtu > PKT_MAX)
        PyErr_Format(PyExc_ValueError, "mtu %lu is beyond %d", mtu, PKT_MAX);
    else if ((t = table_from(table, 0)) != NULL && (d = PyMem_Malloc(db.len > 0 ? (size_t)db.len : 1)) == NULL)
        PyErr_NoMemory();
    if (d != NULL) {
        memcpy(d, db.buf, (size_t)db.len);
        addr6_t ip;
        int parsed, canonical;
        parse_ip(sender_ip, &ip, &parsed, &canonical);  /* a received address is always canonical */
        vnet_hdr_t h = {0};
        int v = vxlan_inbound(t, d, (size_t)db.len, canonical, ip, vni, mb.buf, (uint32_t)subnet,
                              (uint32_t)mask, own6.has ? &own6.subnet6 : NULL);
        if (v == V_OK)
            v = vxlan_tap_frame(d + VXLAN_HDR_LEN, (size_t)db.len - VXLAN_HDR_LEN, (unsigned)mtu, &h);
        const char *f = (const char *)d + VXLAN_HDR_LEN;
        if (v != V_OK) {
            result = PyUnicode_FromString(reason_names[v]);
        } else if (h.gso_type == GSO_NONE) {
            result = PyBytes_FromStringAndSize(f, db.len - VXLAN_HDR_LEN);
        } else {
            unsigned char b[VNET_HDR_LEN];
            vnet_put(b, &h);
            result = Py_BuildValue("(y#y#)", (const char *)b, (Py_ssize_t)VNET_HDR_LEN, f, db.len - VXLAN_HDR_LEN);
        }
    }
    PyMem_Free(d);
    table_unref(t);
    PyBuffer_Release(&db);
    PyBuffer_Release(&mb);
    return result;
}

static PyObject *py_complete_partial_checksum(PyObject *self, PyObject *arg)
{
    Py_buffer pb;
    if (PyObject_GetBuffer(arg, &pb, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL;
    if (ipv4_check(pb.buf, (size_t)pb.len) != V_OK) {
        PyErr_SetString(PyExc_ValueError, "complete_partial_checksum() takes a checked IPv4 packet");
    } else if ((result = PyBytes_FromStringAndSize(pb.buf, pb.len)) != NULL
               && !complete_partial_checksum((unsigned char *)PyBytes_AS_STRING(result), (size_t)pb.len)) {
        Py_SETREF(result, Py_NewRef(Py_None));
    }
    PyBuffer_Release(&pb);
    return result;
}

/* ---- Python API: superpackets (parity with overlayd.encap.gso) ------------------ */

/* segment() (l2 0) or segment_frame() (l2 ETH_HDR_LEN: a tap's frame, the header's offsets counted
 * from its start, each segment behind the frame's Ethernet header), as the engine cuts a read. */
static PyObject *segment_l2(PyObject *args, const char *format, size_t l2)
{
    Py_buffer hb, pb;
    if (!PyArg_ParseTuple(args, format, &hb, &pb))
        return NULL;
    PyObject *result = NULL;
    size_t len = (size_t)pb.len, n = len > l2 ? len - l2 : 0;  /* n: the IP packet's bytes */
    unsigned char *f = PyMem_Malloc(len > l2 ? len : l2 + 1), *seg = PyMem_Malloc(l2 + PKT_MAX + 60);
    if (hb.len != VNET_HDR_LEN) {
        PyErr_SetString(PyExc_ValueError, "a virtio_net_hdr is 10 bytes");
    } else if (f == NULL || seg == NULL) {
        PyErr_NoMemory();
    } else {
        vnet_hdr_t h;
        unsigned char *p = f + l2;
        vnet_parse(hb.buf, &h);
        vnet_strip_l2(&h, (unsigned)l2);
        memcpy(f, pb.buf, len);
        int v = gso_check(p, n), count = 1;
        if (v == V_OK && (count = gso_prepare(&h, p, n)) < 0)
            v = -count;
        if (v != V_OK) {
            result = PyUnicode_FromString(reason_names[v]);
        } else if (h.gso_type == GSO_NONE) {
            result = Py_BuildValue("[y#]", (const char *)f, pb.len);
        } else if ((result = PyList_New(count)) != NULL) {
            memcpy(seg, f, l2);
            for (int i = 0; i < count; i++) {  /* the headers and payload the engine sends as two iovecs */
                const unsigned char *data;
                size_t data_len, got = l2 + gso_segment(&h, p, i, count, seg + l2, &data, &data_len);
                memcpy(seg + got, data, data_len);
                PyObject *item = PyBytes_FromStringAndSize((const char *)seg, (Py_ssize_t)(got + data_len));
                if (item == NULL) {
                    Py_CLEAR(result);
                    break;
                }
                PyList_SET_ITEM(result, i, item);
            }
        }
    }
    PyMem_Free(f);
    PyMem_Free(seg);
    PyBuffer_Release(&hb);
    PyBuffer_Release(&pb);
    return result;
}

static PyObject *py_segment(PyObject *self, PyObject *args)
{
    return segment_l2(args, "y*y*:segment", 0);
}

static PyObject *py_segment_frame(PyObject *self, PyObject *args)
{
    return segment_l2(args, "y*y*:segment_frame", ETH_HDR_LEN);
}

/* (header, packet or frame) for the run pkts[0:count] (l2 bytes before each), as the engine writes it. */
static PyObject *run_item(unsigned char *const *pkts, const size_t *lens, int count, size_t l2)
{
    static const unsigned char none[VNET_HDR_LEN];
    if (count == 1)
        return Py_BuildValue("(y#y#)", (const char *)none, (Py_ssize_t)VNET_HDR_LEN, (const char *)pkts[0] - l2,
                             (Py_ssize_t)(lens[0] + l2));
    unsigned char hdr[GRO_HDR_MAX];
    size_t hlen = gro_header(pkts, lens, count, l2, hdr), total = hlen - VNET_HDR_LEN;
    for (int i = 0; i < count; i++)
        total += lens[i] - gro_payload_offset(pkts[i]);
    PyObject *pkt = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (pkt == NULL)
        return NULL;
    char *at = PyBytes_AS_STRING(pkt);
    memcpy(at, hdr + VNET_HDR_LEN, hlen - VNET_HDR_LEN);
    at += hlen - VNET_HDR_LEN;
    for (int i = 0; i < count; i++) {
        size_t skip = gro_payload_offset(pkts[i]);
        memcpy(at, pkts[i] + skip, lens[i] - skip);
        at += lens[i] - skip;
    }
    return Py_BuildValue("(y#N)", (const char *)hdr, (Py_ssize_t)VNET_HDR_LEN, pkt);
}

/* coalesce() (l2 0) or coalesce_frames() (l2 ETH_HDR_LEN: frames, each at least that long), as the
 * engine's deliver() runs it: args (packets[, verified[, udp]]), verified one truth value per packet
 * (None or left out: none verified), udp (default true) whether UDP runs are made too. */
static PyObject *coalesce_l2(PyObject *args, const char *format, size_t l2)
{
    PyObject *arg, *flags = Py_None;
    int udp = 1;
    if (!PyArg_ParseTuple(args, format, &arg, &flags, &udp))
        return NULL;
    PyObject *seq = PySequence_Fast(arg, "coalesce() takes a sequence of bytes");
    if (seq == NULL)
        return NULL;
    PyObject *vseq = flags == Py_None ? NULL : PySequence_Fast(flags, "verified is a sequence of flags");
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    unsigned char **pkts = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof(*pkts));
    size_t *lens = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof(*lens));
    unsigned char *verified = PyMem_Calloc(n > 0 ? (size_t)n : 1, 1);
    int flags_ok = flags == Py_None || (vseq != NULL && PySequence_Fast_GET_SIZE(vseq) == n);
    if (vseq != NULL && !flags_ok)
        PyErr_SetString(PyExc_ValueError, "verified needs one flag per packet");
    PyObject *result = !flags_ok ? NULL : pkts && lens && verified ? PyList_New(0) : PyErr_NoMemory();
    /* The flags first: their truth may run Python code (a __bool__), which could change the packet list;
     * the pointers into the packets are taken after, with no call into Python in between. */
    for (Py_ssize_t i = 0; result != NULL && vseq != NULL && i < n; i++) {
        int truth = PyObject_IsTrue(PySequence_Fast_GET_ITEM(vseq, i));
        if (truth < 0)
            Py_CLEAR(result);
        verified[i] = (unsigned char)(truth > 0);
    }
    if (result != NULL && PySequence_Fast_GET_SIZE(seq) != n) {
        PyErr_SetString(PyExc_RuntimeError, "coalesce(): the packet list changed");
        Py_CLEAR(result);
    }
    for (Py_ssize_t i = 0; result != NULL && i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(item) || (size_t)PyBytes_GET_SIZE(item) < l2) {
            PyErr_SetString(PyExc_TypeError, l2 ? "coalesce_frames() takes bytes of at least an Ethernet header"
                                                 : "coalesce() takes bytes");
            Py_CLEAR(result);
            break;
        }
        pkts[i] = (unsigned char *)PyBytes_AS_STRING(item) + l2;
        lens[i] = (size_t)PyBytes_GET_SIZE(item) - l2;
    }
    for (Py_ssize_t i = 0; result != NULL && i < n;) {
        int count = gro_run(pkts + i, lens + i, verified + i, (int)(n - i), l2, udp);
        PyObject *item = run_item(pkts + i, lens + i, count, l2);
        if (item == NULL || PyList_Append(result, item) < 0)
            Py_CLEAR(result);
        Py_XDECREF(item);
        i += count;
    }
    PyMem_Free(pkts);
    PyMem_Free(lens);
    PyMem_Free(verified);
    Py_XDECREF(vseq);
    Py_DECREF(seq);
    return result;
}

static PyObject *py_coalesce(PyObject *self, PyObject *args)
{
    return coalesce_l2(args, "O|Op:coalesce", 0);
}

static PyObject *py_coalesce_frames(PyObject *self, PyObject *args)
{
    return coalesce_l2(args, "O|Op:coalesce_frames", ETH_HDR_LEN);
}

/* ---- Python API: the engine ------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    engine_t engine;
    int ready;  /* engine_init succeeded */
    unsigned char mac[MAC_LEN];  /* own_mac, for a VXLAN engine */
} EngineObject;

static int Engine_init(EngineObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"dev_fd", "sock_fd", "port", "subnet_int", "mask", "table", "vnet_hdr", "udp_gso",
                             "vni", "own_mac", "mtu", "subnet6_int", "tunnel_mtu", "udp_runs", NULL};
    int dev_fd, sock_fd, port, vnet = 0, udp_gso = 0, no_check = 0, mtu = 0, udp_runs = 0;
    unsigned tunnel_mtu = 0;
    subnet6_arg_t own6 = {{0, 0}, 0};
    socklen_t optlen = sizeof(no_check);
    unsigned long long subnet, mask;
    PyObject *table, *vni_obj = Py_None;
    Py_buffer mac = {0};
    uint32_t vni = 0;
    if (self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "Engine.__init__ called twice");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiiKKO|ppOy*iO&Ip:Engine", kwlist, &dev_fd, &sock_fd, &port,
                                     &subnet, &mask, &table, &vnet, &udp_gso, &vni_obj, &mac, &mtu, subnet6_arg,
                                     &own6, &tunnel_mtu, &udp_runs))
        return -1;
    int vxlan = vni_obj != Py_None, bad = 0;
    if (vxlan) {  /* a tap speaking VXLAN */
        bad = !vni_arg(vni_obj, &vni);
        if (!bad && (mac.buf == NULL || mac.len != MAC_LEN)) {
            PyErr_SetString(PyExc_ValueError, "a VXLAN engine needs own_mac (6 bytes)");
            bad = 1;
        }
        if (!bad && vnet && (mtu < 68 || mtu > PKT_MAX)) {  /* 68: the smallest IPv4 MTU (RFC 791) */
            PyErr_Format(PyExc_ValueError, "a VXLAN engine on a vnet_hdr tap needs the tap's mtu (68..%d), got %d",
                         PKT_MAX, mtu);
            bad = 1;
        }
        if (!bad)
            memcpy(self->mac, mac.buf, MAC_LEN);
    }
    if (mac.buf != NULL)
        PyBuffer_Release(&mac);
    if (bad)
        return -1;
    if (udp_gso && getsockopt(sock_fd, SOL_SOCKET, SO_NO_CHECK, &no_check, &optlen) == 0 && no_check) {
        PyErr_SetString(PyExc_ValueError, "udp_gso needs UDP checksums: the kernel refuses UDP_SEGMENT on a "
                                          "socket with SO_NO_CHECK");
        return -1;
    }
    if (port < 0 || port > 65535) {
        PyErr_Format(PyExc_ValueError, "port %d is outside 0..65535", port);
        return -1;
    }
    peer_table_t *t = table_from(table, (uint16_t)port);
    if (t == NULL)
        return -1;
    int code = engine_init(&self->engine, dev_fd, sock_fd, vnet, udp_gso, (uint16_t)port, (uint32_t)subnet,
                           (uint32_t)mask, t);
    if (code != 0) {
        errno = code;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (vxlan)
        engine_set_vxlan(&self->engine, vni, self->mac, vnet ? (unsigned)mtu : PKT_MAX);
    if (own6.has)
        engine_set_ipv6(&self->engine, own6.subnet6, tunnel_mtu);
    self->engine.udp_runs = vnet && udp_runs;
    self->ready = 1;
    return 0;
}

static void Engine_dealloc(EngineObject *self)
{
    if (self->ready) {
        Py_BEGIN_ALLOW_THREADS
        engine_destroy(&self->engine);
        Py_END_ALLOW_THREADS
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_ready(EngineObject *self)
{
    if (!self->ready)
        PyErr_SetString(PyExc_RuntimeError, "Engine is not initialised");
    return self->ready;
}

static PyObject *Engine_set_peers(EngineObject *self, PyObject *table)
{
    if (!check_ready(self))
        return NULL;
    peer_table_t *t = table_from(table, self->engine.port);
    if (t == NULL)
        return NULL;
    engine_set_table(&self->engine, t);
    Py_RETURN_NONE;
}

static PyObject *Engine_start(EngineObject *self, PyObject *unused)
{
    if (!check_ready(self))
        return NULL;
    int code = engine_start(&self->engine);
    if (code != 0) {
        errno = code;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *Engine_stop(EngineObject *self, PyObject *unused)
{
    if (!check_ready(self))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    engine_stop(&self->engine);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* Add name: value to d when value is not zero. */
static int put_count(PyObject *d, PyObject *key, uint64_t value)
{
    if (key == NULL)
        return -1;
    PyObject *v = value ? PyLong_FromUnsignedLongLong(value) : NULL;
    int rc = value == 0 ? 0 : (v == NULL ? -1 : PyDict_SetItem(d, key, v));
    Py_DECREF(key);
    Py_XDECREF(v);
    return rc;
}

#define LOAD(field) (__atomic_load_n(&e->counters[OUT].field, __ATOMIC_RELAXED) + \
                     __atomic_load_n(&e->counters[IN].field, __ATOMIC_RELAXED))

/* The engine's counters with a fixed name (besides drop_<reason>): the names of overlayd.encap.drops
 * (its KNOWN_COUNTERS), as COUNTER_NAMES tells the parity test. */
static const struct { const char *name; size_t offset; } plain[] = {
#define F(x) {#x, offsetof(counters_t, x)}
    F(dev_rx_packets), F(dev_rx_bytes), F(dev_read_error), F(tx_packets), F(tx_bytes), F(tx_dropped),
    F(rx_packets), F(rx_bytes), F(sock_read_error), F(dev_tx_packets), F(dev_tx_bytes), F(dev_rx_superpackets),
    F(dev_tx_superpackets), F(tx_gso_sends), F(rx_coalesced),
#undef F
};
#define NPLAIN (sizeof(plain) / sizeof(plain[0]))

/* COUNTER_NAMES: every name Engine.counters() may report in its first dict. */
static PyObject *counter_names(void)
{
    PyObject *names = PyTuple_New((Py_ssize_t)(NPLAIN + V_COUNT - 1));
    for (size_t i = 0; names != NULL && i < NPLAIN + V_COUNT - 1; i++) {
        PyObject *name = i < NPLAIN ? PyUnicode_FromString(plain[i].name)
                                    : PyUnicode_FromFormat("drop_%s", reason_names[i - NPLAIN + 1]);
        if (name == NULL)
            Py_CLEAR(names);
        else
            PyTuple_SET_ITEM(names, (Py_ssize_t)i, name);
    }
    return names;
}

static PyObject *Engine_counters(EngineObject *self, PyObject *unused)
{
    if (!check_ready(self))
        return NULL;
    engine_t *e = &self->engine;
    PyObject *d = PyDict_New(), *tx_errors = PyDict_New(), *write_errors = PyDict_New();
    int rc = d && tx_errors && write_errors ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < NPLAIN; i++) {
        uint64_t sum = 0;
        for (int dir = OUT; dir <= IN; dir++)
            sum += __atomic_load_n((uint64_t *)((char *)&e->counters[dir] + plain[i].offset), __ATOMIC_RELAXED);
        rc = put_count(d, PyUnicode_FromString(plain[i].name), sum);
    }
    for (int v = 1; rc == 0 && v < V_COUNT; v++)
        rc = put_count(d, PyUnicode_FromFormat("drop_%s", reason_names[v]), LOAD(drops[v]));
    for (int code = 0; rc == 0 && code < ERRNO_SLOTS; code++) {
        rc = put_count(tx_errors, PyLong_FromLong(code == ERRNO_SLOTS - 1 ? -1 : code), LOAD(tx_error[code]));
        if (rc == 0)
            rc = put_count(write_errors, PyLong_FromLong(code == ERRNO_SLOTS - 1 ? -1 : code),
                           LOAD(dev_write_error[code]));
    }
    if (rc < 0) {
        Py_XDECREF(d);
        Py_XDECREF(tx_errors);
        Py_XDECREF(write_errors);
        return NULL;
    }
    return Py_BuildValue("(NNN)", d, tx_errors, write_errors);
}

static PyObject *Engine_take_answers(EngineObject *self, PyObject *unused)
{
    if (!check_ready(self))
        return NULL;
    answer_t *got = PyMem_Malloc(ANSWER_MAX * sizeof(*got));  /* ~80 KB: not on a loop thread's stack */
    if (got == NULL)
        return PyErr_NoMemory();
    int n = engine_take_answers(&self->engine, got, ANSWER_MAX);
    PyObject *list = PyList_New(n);
    for (int i = 0; list != NULL && i < n; i++) {
        PyObject *item = Py_BuildValue("(sy#)", reason_names[got[i].verdict], (const char *)got[i].data,
                                       (Py_ssize_t)got[i].len);
        if (item == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, item);
    }
    PyMem_Free(got);
    return list;
}

static PyObject *Engine_error(EngineObject *self, PyObject *unused)
{
    if (!check_ready(self))
        return NULL;
    engine_t *e = &self->engine;
    pthread_mutex_lock(&e->lock);
    int failed = e->failed, code = e->error_errno;
    const char *where = e->error_where;
    pthread_mutex_unlock(&e->lock);
    if (!failed)
        Py_RETURN_NONE;
    return Py_BuildValue("(si)", where, code);
}

static PyObject *Engine_last_beat(EngineObject *self, PyObject *unused)
{
    if (!check_ready(self))
        return NULL;
    engine_t *e = &self->engine;
    if (!e->running)
        Py_RETURN_NONE;
    int64_t out = __atomic_load_n(&e->beat_ns[OUT], __ATOMIC_RELAXED);
    int64_t in = __atomic_load_n(&e->beat_ns[IN], __ATOMIC_RELAXED);
    return PyFloat_FromDouble((double)(out < in ? out : in) / 1e9);
}

static PyObject *Engine_notify_fd(EngineObject *self, void *closure)
{
    return check_ready(self) ? PyLong_FromLong(self->engine.notify_fd) : NULL;
}

static PyMethodDef engine_methods[] = {
    {"set_peers", (PyCFunction)Engine_set_peers, METH_O,
     "set_peers(table): build a C table from the PeerTable and swap it in (the threads use it from their "
     "next batch)."},
    {"start", (PyCFunction)Engine_start, METH_NOARGS, "Start the two forwarding threads."},
    {"stop", (PyCFunction)Engine_stop, METH_NOARGS, "Wake the threads, wait for them to end (no-op when "
     "stopped). The fds stay open: their owner closes them."},
    {"counters", (PyCFunction)Engine_counters, METH_NOARGS,
     "counters() -> ({name: n}, {errno: n} send failures, {errno: n} device write failures); non-zero only. "
     "errno 0: a peer's node IP is not an address; -1: a code beyond the table."},
    {"take_answers", (PyCFunction)Engine_take_answers, METH_NOARGS,
     "[(reason, first bytes)] of the packets dropped for no_lease or too_big since the last call (Python answers "
     "them with ICMP or ICMPv6); also clears notify_fd."},
    {"error", (PyCFunction)Engine_error, METH_NOARGS,
     "None, or (where, errno) when a thread failed and ended (notify_fd is then readable)."},
    {"last_beat", (PyCFunction)Engine_last_beat, METH_NOARGS,
     "time.monotonic() of the older of the two threads' last turn, None when not running."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef engine_getset[] = {
    {"notify_fd", (getter)Engine_notify_fd, NULL, "An eventfd readable when take_answers() or error() has news.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "overlayd._fastpath.Engine",
    .tp_basicsize = sizeof(EngineObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Engine(dev_fd, sock_fd, port, subnet_int, mask, table, vnet_hdr=False, udp_gso=False, vni=None, "
              "own_mac=None, mtu=0, subnet6_int=None, tunnel_mtu=0, udp_runs=False)\n\n"
              "The forwarding threads between a tun fd (non-blocking; with vnet_hdr, opened with "
              "IFF_VNET_HDR) and a UDP socket, for our subnet_int/mask, peers from the PeerTable table, "
              "peers' port `port`. udp_gso: send superpackets' segments with UDP GSO (the socket must "
              "checksum, not SO_NO_CHECK); UDP_GRO is turned on for the socket either way, unless the wire is VXLAN. With vni (and "
              "own_mac, our VtepMAC, 6 bytes) dev_fd is a tap and the wire is VXLAN on vni; with vnet_hdr "
              "too, mtu is the tap's: a kernel VTEP's TCP superpacket beyond it is written as one GSO write. "
              "udp_runs (with vnet_hdr; the device must take UDP GSO writes): UDP datagrams are coalesced "
              "too (coalesce(..., udp=True)).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = engine_methods,
    .tp_getset = engine_getset,
};

static PyMethodDef methods[] = {
    {"classify_outbound", py_classify_outbound, METH_VARARGS,
     "classify_outbound(pkt, table, mtu=None) -> (node_ip, pkt) | reason\n\n"
     "overlayd.encap.udp.outbound through the engine's C table: the owning peer's node IP and the payload, "
     "or the drop reason."},
    {"classify_inbound", py_classify_inbound, METH_VARARGS,
     "classify_inbound(dgram, (sender_ip, sender_port), port, subnet_int, mask, table, subnet6_int=None) -> "
     "dgram | reason\n\n"
     "overlayd.encap.udp.inbound through the engine's C table: the packet to write to the tun, or the drop "
     "reason."},
    {"classify_tap_outbound", py_classify_tap_outbound, METH_VARARGS,
     "classify_tap_outbound(frame, vni, table) -> (node_ip, payload) | reason\n\n"
     "overlayd.dataplane.codecs.VxlanCodec.outbound through the engine's C table: the owning peer's node IP "
     "and the VXLAN payload (destination MAC rewritten to its VtepMAC), or the drop reason."},
    {"classify_vxlan_inbound", py_classify_vxlan_inbound, METH_VARARGS,
     "classify_vxlan_inbound(payload, sender_ip, vni, own_mac, subnet_int, mask, table, mtu=65535, "
     "subnet6_int=None) -> "
     "frame | (vnet_hdr, frame) | reason\n\n"
     "overlayd.dataplane.codecs.VxlanCodec.inbound (with the tap's mtu) through the engine's C table: the "
     "frame to write to the tap (a partial inner checksum completed), a kernel VTEP's TCP superpacket beyond "
     "mtu with the GSO header it is written with (whole: the kernel cuts it as Python's reference does), "
     "or the drop reason."},
    {"complete_partial_checksum", py_complete_partial_checksum, METH_O,
     "complete_partial_checksum(pkt) -> bytes | None\n\noverlayd.encap.ether.complete_partial_checksum in C."},
    {"segment", py_segment, METH_VARARGS,
     "segment(vnet_hdr, pkt) -> [packet, ...] | reason\n\noverlayd.encap.gso.segment in C."},
    {"coalesce", py_coalesce, METH_VARARGS,
     "coalesce([pkt, ...], verified=None, udp=True) -> [(vnet_hdr, packet), ...]\n\n"
     "overlayd.encap.gso.coalesce in C."},
    {"segment_frame", py_segment_frame, METH_VARARGS,
     "segment_frame(vnet_hdr, frame) -> [frame, ...] | reason\n\noverlayd.encap.gso.segment_frame in C."},
    {"coalesce_frames", py_coalesce_frames, METH_VARARGS,
     "coalesce_frames([frame, ...], verified=None, udp=True) -> [(vnet_hdr, frame), ...]\n\n"
     "overlayd.encap.gso.coalesce_frames in C."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "overlayd._fastpath",
    "The userspace backends' data plane in C: the forwarding engine (see overlayd/dataplane/fast.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&EngineType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PyObject *names = counter_names();
    if (names == NULL || PyModule_AddIntConstant(m, "BATCH", BATCH) < 0
        || PyModule_AddIntConstant(m, "VNET_HDR_LEN", VNET_HDR_LEN) < 0 || PyModule_AddType(m, &EngineType) < 0
        || PyModule_AddObjectRef(m, "COUNTER_NAMES", names) < 0)
        Py_CLEAR(m);
    Py_XDECREF(names);
    return m;
}
