/*
 * evws._speedups: optional C versions of the per-byte loops of RFC 6455 (and
 * of fan-out's send loop, send_each).
 *
 * Why: unmasking (5.3) and UTF-8 validation (8.1) touch every payload byte.
 * In pure Python they cost milliseconds per MiB; here they run at memory
 * speed. Everything in this file has a pure-Python twin (evws/protocol/mask.py
 * and utf8.py) that is used when this module cannot be built or imported, and
 * the test suite runs both against the same cases.
 *
 *   apply_mask(data, key) -> bytes
 *       data XORed with the 4-byte key repeated (mask and unmask alike).
 *   unmask_into(out, out_pos, data, start, stop, key, key_pos) -> None
 *       XOR data[start:stop] with the key, starting at key byte key_pos, and
 *       write the result to out[out_pos:out_pos + stop - start] (out: a
 *       writable buffer, a bytearray -- or a bytes object from new_payload()
 *       that nothing else has seen yet). The receive path assembles a large
 *       message in one buffer this way: no slice of the input, no per-read
 *       bytes object, no join at the end (one copy instead of three).
 *   new_payload(n) -> bytes
 *       an uninitialised bytes object of n bytes, for unmask_into to fill.
 *       Why: a message whose size the frame header announced is unmasked
 *       straight into the bytes object handed to the user -- no zero-filled
 *       bytearray first, no bytes(bytearray) copy at the end (each of those
 *       costs ~0.5 ms per MiB here, page faults included). This is what
 *       CPython's own functions do with PyBytes_FromStringAndSize(NULL, n);
 *       the difference is only that the filling spans several calls, so the
 *       caller (websocket.py) must not let the object out before it is full.
 *   simple_frame(data, pos, limit) -> (opcode, payload, stop) or None
 *       the commonest frame a server receives, in one call: if data[pos:]
 *       starts with a whole final TEXT or BINARY frame, masked, without RSV
 *       bits, with a 7- or 16-bit length of at most `limit` bytes (None: no
 *       limit), return its opcode, its unmasked payload and where it ends;
 *       otherwise None, and the caller parses the frame the general way.
 *       Why: on a small echo this replaces ~100 bytecodes, two slices and
 *       a call (websocket.py's fast path, benchmarks/PROFILE.md phase 5).
 *   simple_message(data, pos, limit, event_type) -> (event, stop) or None
 *       simple_frame's frame as the protocol's event: event_type (a tuple
 *       subclass, MessageReceived) of (opcode, payload), built without an
 *       argument tuple, and a TEXT payload already checked as UTF-8 (None if
 *       it is not: the general path then reports it). Why: the receive short
 *       cut in one call, no 3-tuple to unpack, no tuple.__new__ call
 *       (benchmarks/PROFILE.md, phase 8).
 *   utf8_feed(data, state) -> int
 *       validate the next piece of a UTF-8 stream. `state` is 0 at the start
 *       of a stream; the result is the state to pass with the next piece
 *       (0 = "between characters"), or -1 at the first invalid byte. The
 *       stream is complete and valid iff the state after the last piece is 0.
 *   send_each(fds, data) -> list of (index, sent)
 *       send(2) the same bytes to every socket fd in the list, non-blocking
 *       (MSG_DONTWAIT | MSG_NOSIGNAL), with the GIL released once for the
 *       whole loop; returns, in order, the (index, bytes sent) of each fd
 *       that did not take all of them (0 after EAGAIN or an error: the
 *       caller's ordinary write path then queues the rest or reports the
 *       error). An fd listed again after a short send gets nothing more,
 *       so a member listed twice still receives its copies in order.
 *       Why: fan-out to 1,000 members spends more in the Python around each
 *       send than in the kernel (benchmarks/PROFILE.md, phase 11). This is
 *       the one function here that is not a per-byte loop of RFC 6455; its
 *       twin is in evws/reactor/stream.py.
 *
 * The UTF-8 state packs what the next bytes must be, so that no byte is ever
 * copied or looked at twice across pieces:
 *     bits 0-7   continuation bytes still needed (0..3)
 *     bits 8-15  lowest allowed value of the NEXT byte
 *     bits 16-23 highest allowed value of the NEXT byte
 * The bytes after the next one are always 80..BF. The narrowed ranges for
 * E0, ED, F0 and F4 (RFC 3629 section 4) reject overlongs, surrogates and
 * code points above U+10FFFF at the first byte that proves them wrong.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <sys/types.h>
#include <sys/socket.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

static const uint64_t HIGH_BITS = 0x8080808080808080ULL;

/* dst[i] = src[i] ^ k[(kpos + i) & 3] for i < n; shared by both functions. */
static void
xor_bytes(unsigned char *dst, const unsigned char *src, Py_ssize_t n,
          const unsigned char *k, unsigned kpos)
{
    Py_ssize_t i = 0;
    uint64_t key8;
    unsigned char key_bytes[8];
    unsigned j;

    /* Eight bytes at a time: the (rotated) key repeated twice fills a 64-bit
     * word in memory order, so the XOR is right whatever the byte order.
     * memcpy keeps unaligned access legal; compilers turn it into plain loads. */
    for (j = 0; j < 8; j++)
        key_bytes[j] = k[(kpos + j) & 3];
    memcpy(&key8, key_bytes, 8);
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        w ^= key8;
        memcpy(dst + i, &w, 8);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ key_bytes[i & 7];
}

static PyObject *
apply_mask(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, key;
    PyObject *result = NULL;

    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "apply_mask(data, key) takes 2 arguments");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &key, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (key.len != 4) {
        PyErr_SetString(PyExc_ValueError, "the masking key must be 4 bytes long");
    } else {
        result = PyBytes_FromStringAndSize(NULL, data.len);
        if (result != NULL)
            xor_bytes((unsigned char *)PyBytes_AS_STRING(result),
                      (const unsigned char *)data.buf, data.len,
                      (const unsigned char *)key.buf, 0);
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return result;
}

static PyObject *
unmask_into(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer out, data, key;
    Py_ssize_t out_pos, start, stop, key_pos;
    PyObject *result = NULL;

    (void)module;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "unmask_into(out, out_pos, data, start, stop, key, key_pos) takes 7 arguments");
        return NULL;
    }
    out_pos = PyLong_AsSsize_t(args[1]);
    start = PyLong_AsSsize_t(args[3]);
    stop = PyLong_AsSsize_t(args[4]);
    key_pos = PyLong_AsSsize_t(args[6]);
    if (PyErr_Occurred())
        return NULL;
    if (PyBytes_CheckExact(args[0])) {
        /* A new_payload() object being filled (see the top of the file). */
        out.obj = NULL;
        out.buf = PyBytes_AS_STRING(args[0]);
        out.len = PyBytes_GET_SIZE(args[0]);
    } else if (PyObject_GetBuffer(args[0], &out, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &data, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&out);
        return NULL;
    }
    if (PyObject_GetBuffer(args[5], &key, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&out);
        return NULL;
    }
    if (key.len != 4) {
        PyErr_SetString(PyExc_ValueError, "the masking key must be 4 bytes long");
    } else if (start < 0 || stop < start || stop > data.len) {
        PyErr_SetString(PyExc_ValueError, "start/stop outside the data");
    } else if (out_pos < 0 || out_pos + (stop - start) > out.len) {
        PyErr_SetString(PyExc_ValueError, "the output buffer is too small");
    } else {
        xor_bytes((unsigned char *)out.buf + out_pos,
                  (const unsigned char *)data.buf + start, stop - start,
                  (const unsigned char *)key.buf, (unsigned)(key_pos & 3));
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *
new_payload(PyObject *module, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);

    (void)module;
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "negative size");
        return NULL;
    }
    return PyBytes_FromStringAndSize(NULL, n);
}

/* The checks of simple_frame and simple_message: 1 and the frame's opcode,
 * payload start and length when data[pos:] starts with a simple frame, 0 when
 * it does not, -1 with an exception set for bad arguments. */
static int
parse_simple(PyObject *const *args, const char *name, int *opcode, Py_ssize_t *start,
             Py_ssize_t *length)
{
    const unsigned char *d;
    Py_ssize_t end, pos, limit = -1, n;
    unsigned char b0, b1;

    if (!PyBytes_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "%s: data must be bytes", name);
        return -1;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (args[2] != Py_None)
        limit = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred())
        return -1;
    if (args[2] != Py_None && limit < 0) {
        PyErr_Format(PyExc_ValueError, "%s: negative limit", name);
        return -1;
    }
    d = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    end = PyBytes_GET_SIZE(args[0]);
    if (pos < 0 || end - pos < 2)
        return 0;
    b0 = d[pos];
    b1 = d[pos + 1];
    if ((b0 != 0x81 && b0 != 0x82) || !(b1 & 0x80))
        return 0;
    if ((b1 & 0x7F) < 126) {
        n = b1 & 0x7F;
        *start = pos + 6;
    } else if ((b1 & 0x7F) == 126 && end - pos >= 4) {
        n = ((Py_ssize_t)d[pos + 2] << 8) | d[pos + 3];
        *start = pos + 8;
    } else {
        return 0;
    }
    if (*start > end || n > end - *start || (limit >= 0 && n > limit))
        return 0;
    *opcode = b0 & 0x0F;
    *length = n;
    return 1;
}

/* The unmasked payload of the frame parse_simple found. */
static PyObject *
simple_payload(PyObject *data, Py_ssize_t start, Py_ssize_t n)
{
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
    PyObject *payload = PyBytes_FromStringAndSize(NULL, n);
    if (payload != NULL)
        xor_bytes((unsigned char *)PyBytes_AS_STRING(payload), d + start, n, d + start - 4, 0);
    return payload;
}

static PyObject *
simple_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t start = 0, n = 0;
    int opcode = 0, found;
    PyObject *payload, *result;

    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "simple_frame(data, pos, limit) takes 3 arguments");
        return NULL;
    }
    found = parse_simple(args, "simple_frame", &opcode, &start, &n);
    if (found <= 0) {
        if (found < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    payload = simple_payload(args[0], start, n);
    if (payload == NULL)
        return NULL;
    result = PyTuple_New(3);
    if (result == NULL) {
        Py_DECREF(payload);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, PyLong_FromLong(opcode));  /* small ints are cached */
    PyTuple_SET_ITEM(result, 1, payload);
    PyTuple_SET_ITEM(result, 2, PyLong_FromSsize_t(start + n));
    if (PyTuple_GET_ITEM(result, 2) == NULL) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

static long utf8_scan(const unsigned char *s, Py_ssize_t n, long state);

static PyObject *
simple_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t start = 0, n = 0;
    int opcode = 0, found;
    PyTypeObject *event_type;
    PyObject *payload, *event, *result, *stop;

    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "simple_message(data, pos, limit, event_type) takes 4 arguments");
        return NULL;
    }
    if (!PyType_Check(args[3]) || !PyType_IsSubtype((PyTypeObject *)args[3], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "simple_message: event_type must be a tuple type");
        return NULL;
    }
    event_type = (PyTypeObject *)args[3];
    found = parse_simple(args, "simple_message", &opcode, &start, &n);
    if (found <= 0) {
        if (found < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    payload = simple_payload(args[0], start, n);
    if (payload == NULL)
        return NULL;
    if (opcode == 1 && utf8_scan((const unsigned char *)PyBytes_AS_STRING(payload), n, 0) != 0) {
        Py_DECREF(payload);
        Py_RETURN_NONE;  /* not valid UTF-8: the general path says so */
    }
    stop = PyLong_FromSsize_t(start + n);
    if (stop == NULL) {
        Py_DECREF(payload);
        return NULL;
    }
    /* What tuple.__new__(event_type, (opcode, payload)) does, without the
     * argument tuple: allocate the subtype with two items and fill them. */
    event = event_type->tp_alloc(event_type, 2);
    if (event == NULL) {
        Py_DECREF(payload);
        Py_DECREF(stop);
        return NULL;
    }
    PyTuple_SET_ITEM(event, 0, PyLong_FromLong(opcode));  /* small ints are cached */
    PyTuple_SET_ITEM(event, 1, payload);
    result = PyTuple_New(2);
    if (result == NULL) {
        Py_DECREF(event);
        Py_DECREF(stop);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, event);
    PyTuple_SET_ITEM(result, 1, stop);
    return result;
}

#define STATE(need, lo, hi) ((long)(need) | ((long)(lo) << 8) | ((long)(hi) << 16))

/* Returns the new state, or -1 at the first invalid byte. */
static long
utf8_scan(const unsigned char *s, Py_ssize_t n, long state)
{
    Py_ssize_t i = 0;
    unsigned need = (unsigned)(state & 0xff);
    unsigned lo = (unsigned)((state >> 8) & 0xff);
    unsigned hi = (unsigned)((state >> 16) & 0xff);

    while (i < n) {
        unsigned c;
        if (need == 0) {
            /* Skip ASCII 32 bytes, then a word, at a time: text is mostly
             * ASCII, and one test per 32 bytes keeps the loop branch-light. */
            while (i + 32 <= n) {
                uint64_t w[4];
                memcpy(w, s + i, 32);
                if ((w[0] | w[1] | w[2] | w[3]) & HIGH_BITS)
                    break;
                i += 32;
            }
            while (i + 8 <= n) {
                uint64_t w;
                memcpy(&w, s + i, 8);
                if (w & HIGH_BITS)
                    break;
                i += 8;
            }
            if (i >= n)
                break;
            c = s[i++];
            if (c < 0x80)
                continue;
            if (c < 0xC2)              /* continuation byte, or overlong C0/C1 */
                return -1;
            if (c < 0xE0) {
                need = 1; lo = 0x80; hi = 0xBF;
            } else if (c < 0xF0) {
                need = 2;
                lo = c == 0xE0 ? 0xA0 : 0x80;   /* E0 80..9F: overlong */
                hi = c == 0xED ? 0x9F : 0xBF;   /* ED A0..BF: surrogates */
            } else if (c < 0xF5) {
                need = 3;
                lo = c == 0xF0 ? 0x90 : 0x80;   /* F0 80..8F: overlong */
                hi = c == 0xF4 ? 0x8F : 0xBF;   /* F4 90..: above U+10FFFF */
            } else {
                return -1;             /* F5..FF never appear */
            }
            continue;
        }
        c = s[i++];
        if (c < lo || c > hi)
            return -1;
        need--;
        lo = 0x80;
        hi = 0xBF;
    }
    return need ? STATE(need, lo, hi) : 0;
}

static PyObject *
utf8_feed(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data;
    long state, result;

    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "utf8_feed(data, state) takes 2 arguments");
        return NULL;
    }
    state = PyLong_AsLong(args[1]);
    if (state == -1 && PyErr_Occurred())
        return NULL;
    if (state < 0 || (state & 0xff) > 3 || state > STATE(3, 0xff, 0xff)) {
        PyErr_SetString(PyExc_ValueError, "invalid UTF-8 validator state");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    result = utf8_scan((const unsigned char *)data.buf, data.len, state);
    PyBuffer_Release(&data);
    return PyLong_FromLong(result);
}

/* One short send: the fd's index and how much it took. */
typedef struct {
    Py_ssize_t index;
    Py_ssize_t sent;
} short_send;

static PyObject *
send_each(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *fds_list, *result = NULL;
    Py_buffer data;
    Py_ssize_t n, i, j, nshort = 0;
    int *fds = NULL;
    short_send *shorts = NULL;

    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send_each(fds, data) takes 2 arguments");
        return NULL;
    }
    fds_list = args[0];
    if (!PyList_Check(fds_list)) {
        PyErr_SetString(PyExc_TypeError, "send_each: fds must be a list of ints");
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    n = PyList_GET_SIZE(fds_list);
    fds = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(int));
    shorts = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(short_send));
    if (fds == NULL || shorts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < n; i++) {
        long fd = PyLong_AsLong(PyList_GET_ITEM(fds_list, i));
        if (fd == -1 && PyErr_Occurred())
            goto done;
        if (fd < 0 || fd > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "send_each: invalid file descriptor");
            goto done;
        }
        fds[i] = (int)fd;
    }
    if (data.len > 0) {
        Py_BEGIN_ALLOW_THREADS
        for (i = 0; i < n; i++) {
            ssize_t sent = 0;
            int blocked = 0;
            /* A short send blocks its fd for the rest of the list (rare:
             * the scan only happens once some send was short). */
            for (j = 0; j < nshort; j++) {
                if (fds[shorts[j].index] == fds[i]) {
                    blocked = 1;
                    break;
                }
            }
            if (!blocked) {
                do {
                    sent = send(fds[i], data.buf, (size_t)data.len,
                                MSG_DONTWAIT | MSG_NOSIGNAL);
                } while (sent < 0 && errno == EINTR);
                if (sent < 0)
                    sent = 0;
            }
            if (sent < data.len) {
                shorts[nshort].index = i;
                shorts[nshort].sent = (Py_ssize_t)sent;
                nshort++;
            }
        }
        Py_END_ALLOW_THREADS
    }
    result = PyList_New(nshort);
    if (result == NULL)
        goto done;
    for (j = 0; j < nshort; j++) {
        PyObject *pair = Py_BuildValue("(nn)", shorts[j].index, shorts[j].sent);
        if (pair == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, j, pair);
    }
done:
    PyMem_Free(fds);
    PyMem_Free(shorts);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef speedups_methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL,
     "apply_mask(data, key) -> bytes: XOR data with the 4-byte key repeated."},
    {"unmask_into", (PyCFunction)(void (*)(void))unmask_into, METH_FASTCALL,
     "unmask_into(out, out_pos, data, start, stop, key, key_pos): XOR data[start:stop]\n"
     "with the key (from key byte key_pos) into out[out_pos:]."},
    {"new_payload", (PyCFunction)new_payload, METH_O,
     "new_payload(n) -> bytes: n uninitialised bytes for unmask_into to fill."},
    {"simple_frame", (PyCFunction)(void (*)(void))simple_frame, METH_FASTCALL,
     "simple_frame(data, pos, limit) -> (opcode, payload, stop) or None"},
    {"simple_message", (PyCFunction)(void (*)(void))simple_message, METH_FASTCALL,
     "simple_message(data, pos, limit, event_type) -> (event_type((opcode, payload)), stop)\n"
     "or None; TEXT payloads must be valid UTF-8."},
    {"utf8_feed", (PyCFunction)(void (*)(void))utf8_feed, METH_FASTCALL,
     "utf8_feed(data, state) -> int: validate the next piece of a UTF-8 stream;\n"
     "returns the next state (0 between characters) or -1 if invalid."},
    {"send_each", (PyCFunction)(void (*)(void))send_each, METH_FASTCALL,
     "send_each(fds, data) -> [(index, sent), ...]: send data to every fd, non-blocking;\n"
     "lists the fds that did not take all of it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "evws._speedups",
    "Optional C versions of unmasking and UTF-8 validation (see mask.py, utf8.py).",
    0,
    speedups_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
