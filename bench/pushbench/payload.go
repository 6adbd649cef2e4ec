package main

import (
	"bytes"
	"strconv"
)

// A payload is "<seq> <unix-nanos> <padding>": the topic's sequence number
// and the send time, in digits a subscriber reads without allocating, then
// letters up to the wanted size. Letters need no escaping in a form, a URL
// or a JSON string, so every target carries the payload unchanged.
const padding = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

// appendPayload appends a payload of at least size bytes (more only when
// the numbers alone are longer). sep separates the fields: ' ', or '+'
// where the payload goes into a form body.
func appendPayload(b []byte, seq uint64, nanos int64, size int, sep byte) []byte {
	start := len(b)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, sep)
	b = strconv.AppendInt(b, nanos, 10)
	b = append(b, sep)
	for len(b)-start < size {
		n := min(size-(len(b)-start), len(padding))
		b = append(b, padding[:n]...)
	}
	return b
}

// parsePayload reads the sequence number and send time of a payload.
func parsePayload(p []byte) (seq uint64, nanos int64, ok bool) {
	seq, p, ok = parseUint(p)
	if !ok || len(p) == 0 || p[0] != ' ' {
		return 0, 0, false
	}
	n, p, ok := parseUint(p[1:])
	if !ok || (len(p) > 0 && p[0] != ' ') || n > 1<<62 {
		return 0, 0, false
	}
	return seq, int64(n), true
}

// parseUint reads leading decimal digits (at most 19, so no overflow).
func parseUint(p []byte) (uint64, []byte, bool) {
	var v uint64
	i := 0
	for ; i < len(p) && i < 19 && p[i] >= '0' && p[i] <= '9'; i++ {
		v = v*10 + uint64(p[i]-'0')
	}
	return v, p[i:], i > 0
}

var dataKey = []byte(`"data":"`)

// jsonData returns the string value of the "data" member of a caddy-push
// WebSocket frame, unescaped only as far as payloads need: not at all.
func jsonData(frame []byte) ([]byte, bool) {
	i := bytes.Index(frame, dataKey)
	if i < 0 {
		return nil, false
	}
	v := frame[i+len(dataKey):]
	end := bytes.IndexByte(v, '"')
	if end < 0 {
		return nil, false
	}
	return v[:end], true
}
