package main

import (
	"bytes"
	"io"
)

// sseEvent is a dispatched event. Its slices are the reader's and hold only
// until the next call to next.
type sseEvent struct {
	ID, Type, Data []byte
}

// sseReader parses text/event-stream as the WHATWG standard does, lines
// ending in CR, LF or CRLF, with a buffer of its own so that a steady
// stream costs no allocation.
type sseReader struct {
	rd     io.Reader
	err    error
	buf    []byte
	r, w   int
	skipLF bool   // the last line ended in CR: a following LF belongs to it
	long   []byte // a line longer than buf
	id     []byte // the last event ID, kept across events as the standard says
	typ    []byte
	data   []byte
}

func newSSEReader(rd io.Reader, size int) *sseReader {
	return &sseReader{rd: rd, buf: make([]byte, size)}
}

// event returns the next event that has data; events without data are not
// dispatched, as in a browser.
func (p *sseReader) event() (sseEvent, error) {
	p.typ, p.data = p.typ[:0], p.data[:0]
	hasData := false
	for {
		line, err := p.readLine()
		if err != nil {
			return sseEvent{}, err
		}
		if len(line) == 0 {
			if hasData {
				return sseEvent{ID: p.id, Type: p.typ, Data: p.data[:len(p.data)-1]}, nil
			}
			p.typ = p.typ[:0]
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(field) {
		case "data":
			p.data = append(append(p.data, value...), '\n')
			hasData = true
		case "event":
			p.typ = append(p.typ[:0], value...)
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				p.id = append(p.id[:0], value...)
			}
		}
	}
}

// readLine returns the next line without its end. It is valid until the
// next call.
func (p *sseReader) readLine() ([]byte, error) {
	p.long = p.long[:0]
	spilled := false
	for {
		if p.skipLF && p.r < p.w {
			if p.buf[p.r] == '\n' {
				p.r++
			}
			p.skipLF = false
		}
		if !p.skipLF {
			if i := indexEOL(p.buf[p.r:p.w]); i >= 0 {
				line := p.buf[p.r : p.r+i]
				p.skipLF = p.buf[p.r+i] == '\r'
				p.r += i + 1
				if spilled {
					return append(p.long, line...), nil
				}
				return line, nil
			}
			if p.r == 0 && p.w == len(p.buf) {
				p.long = append(p.long, p.buf...)
				spilled = true
				p.w = 0
			}
		}
		if err := p.fill(); err != nil {
			return nil, err
		}
	}
}

// fill moves what is left to the front and reads more.
func (p *sseReader) fill() error {
	if p.err != nil {
		return p.err
	}
	p.w = copy(p.buf, p.buf[p.r:p.w])
	p.r = 0
	n, err := p.rd.Read(p.buf[p.w:])
	p.w += n
	if err != nil {
		p.err = err
		if n == 0 {
			return err
		}
	}
	return nil
}

// indexEOL finds the first CR or LF with two vectorised scans rather than
// a byte loop.
func indexEOL(b []byte) int {
	lf := bytes.IndexByte(b, '\n')
	head := b
	if lf >= 0 {
		head = b[:lf]
	}
	if cr := bytes.IndexByte(head, '\r'); cr >= 0 {
		return cr
	}
	return lf
}
