package main

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
)

// A WebSocket client just big enough for the benchmark: it reads server
// frames straight out of the connection's buffer, answers pings and
// closes, and never sends data. A general client library would allocate a
// reader per message.

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// maxWSMessage bounds a message the reader assembles.
const maxWSMessage = 1 << 20

// wsKey returns a Sec-WebSocket-Key and the Sec-WebSocket-Accept a server
// must answer it with.
func wsKey() (key, accept string) {
	var raw [16]byte
	binary.LittleEndian.PutUint64(raw[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(raw[8:], rand.Uint64())
	key = base64.StdEncoding.EncodeToString(raw[:])
	sum := sha1.Sum([]byte(key + wsGUID))
	return key, base64.StdEncoding.EncodeToString(sum[:])
}

// wsCloseError is a close frame from the server; its code tells why.
type wsCloseError struct{ code int }

func (e wsCloseError) Error() string { return fmt.Sprintf("ws close %d", e.code) }

type wsReader struct {
	br      *bufio.Reader
	conn    net.Conn
	msg     []byte // a fragmented message, or one larger than br's buffer
	control [2 + 4 + 125]byte
}

// next returns the next text or binary message, valid until the next call.
func (w *wsReader) next() ([]byte, error) {
	w.msg = w.msg[:0]
	for {
		fin, op, payload, err := w.frame()
		if err != nil {
			return nil, err
		}
		switch op {
		case 0x0, 0x1, 0x2: // continuation, text, binary
			if fin && len(w.msg) == 0 {
				return payload, nil
			}
			if len(w.msg)+len(payload) > maxWSMessage {
				return nil, errors.New("ws message too large")
			}
			w.msg = append(w.msg, payload...)
			if fin {
				return w.msg, nil
			}
		case 0x8:
			code := 1005
			if len(payload) >= 2 {
				code = int(binary.BigEndian.Uint16(payload))
			}
			w.writeControl(0x8, payload[:min(len(payload), 2)])
			return nil, wsCloseError{code}
		case 0x9:
			if err := w.writeControl(0xA, payload[:min(len(payload), 125)]); err != nil {
				return nil, err
			}
		}
	}
}

// frame reads one frame. A payload that fits the buffer is returned in
// place, and stays valid until the next read.
func (w *wsReader) frame() (fin bool, op byte, payload []byte, err error) {
	h, err := w.br.Peek(2)
	if err != nil {
		return false, 0, nil, err
	}
	fin, op, masked, n := h[0]&0x80 != 0, h[0]&0x0f, h[1]&0x80 != 0, uint64(h[1]&0x7f)
	w.br.Discard(2)
	if masked {
		return false, 0, nil, errors.New("ws: masked frame from server")
	}
	switch n {
	case 126:
		ext, err := w.br.Peek(2)
		if err != nil {
			return false, 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(ext))
		w.br.Discard(2)
	case 127:
		ext, err := w.br.Peek(8)
		if err != nil {
			return false, 0, nil, err
		}
		n = binary.BigEndian.Uint64(ext)
		w.br.Discard(8)
	}
	if n > maxWSMessage {
		return false, 0, nil, errors.New("ws frame too large")
	}
	if int(n) <= w.br.Size() {
		payload, err = w.br.Peek(int(n))
		w.br.Discard(len(payload))
		return fin, op, payload, err
	}
	// rare: larger than the buffer, so read it whole into msg's tail
	start := len(w.msg)
	w.msg = append(w.msg, make([]byte, n)...)
	if _, err := io.ReadFull(w.br, w.msg[start:]); err != nil {
		return false, 0, nil, err
	}
	payload = w.msg[start:]
	w.msg = w.msg[:start]
	return fin, op, payload, nil
}

// writeControl sends a control frame. Client frames must be masked; a zero
// mask leaves the payload as it is, which servers accept.
func (w *wsReader) writeControl(op byte, payload []byte) error {
	f := append(w.control[:0], 0x80|op, 0x80|byte(len(payload)), 0, 0, 0, 0)
	f = append(f, payload...)
	_, err := w.conn.Write(f)
	return err
}
