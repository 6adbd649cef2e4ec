package push

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"
)

// publish serves a Mercure publish: a form (topic, several allowed; data;
// type; retry; id; private) with a publisher's token that may publish to
// every topic. The answer is the event's id, as text. Fields it does not
// know are ignored, as the protocol asks.
func (h *MercureHandler) publish(w http.ResponseWriter, r *http.Request) error {
	base := h.baseURL(r)
	token, fromCookie := h.token(r, r.URL.Query().Get)
	if token == "" {
		return h.authError(w, r, http.StatusUnauthorized, "", errors.New("a token is required to publish"))
	}
	if fromCookie && !h.publishAllowed(requestOrigin(r)) {
		return h.authError(w, r, http.StatusForbidden, "insufficient_scope", errors.New("a token from a cookie may publish only from an origin in publish_origins"))
	}
	g, err := h.verify(&h.publisherJWT, token, base)
	if err != nil {
		return h.authError(w, r, http.StatusUnauthorized, "invalid_token", err)
	}
	m, status, err := h.readUpdate(r, base)
	if err != nil {
		return writeError(w, r, status, err)
	}
	if !g.mercure.CanPublish(m.Topics, h.matches) {
		return h.authError(w, r, http.StatusForbidden, "insufficient_scope", errors.New("the token may not publish to every topic of the update"))
	}
	sum := sha256.Sum256([]byte(token))
	p, err := h.sse.hub.PublishAs(r.Context(), m, "jwt:"+hex.EncodeToString(sum[:]))
	switch {
	case errors.Is(err, ErrInvalidMessage):
		return writeError(w, r, http.StatusBadRequest, err)
	case err != nil:
		return subscribeError(w, r, err)
	}
	id := hashID(p.ID)
	hdr := w.Header()
	hdr.Set("Content-Type", "text/plain; charset=utf-8")
	hdr.Set("Content-Length", strconv.Itoa(len(id)))
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, id)
	return nil
}

// requestOrigin is the page a browser request comes from: its Origin, or
// the origin of its Referer.
func requestOrigin(r *http.Request) string {
	if o := r.Header.Get("Origin"); o != "" {
		return o
	}
	if u, err := url.Parse(r.Header.Get("Referer")); err == nil && u.Host != "" {
		return u.Scheme + "://" + u.Host
	}
	return ""
}

// readUpdate reads and checks a publish form. Too large a body, too many
// topics or too long a topic is 413; anything malformed 400.
func (h *MercureHandler) readUpdate(r *http.Request, base string) (Message, int, error) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, _ := mime.ParseMediaType(ct); mt != "application/x-www-form-urlencoded" {
			return Message{}, http.StatusUnsupportedMediaType, fmt.Errorf("publish with a form body (application/x-www-form-urlencoded), not %s", mt)
		}
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, h.MaxBody+1))
	if err != nil {
		return Message{}, http.StatusBadRequest, fmt.Errorf("reading the body: %v", err)
	}
	if int64(len(raw)) > h.MaxBody {
		return Message{}, http.StatusRequestEntityTooLarge, fmt.Errorf("body larger than %d bytes", h.MaxBody)
	}
	form, err := url.ParseQuery(string(raw))
	if err != nil {
		return Message{}, http.StatusBadRequest, fmt.Errorf("malformed form body: %v", err)
	}
	for name, values := range form {
		if !utf8.ValidString(name) || !allValidUTF8(values) {
			return Message{}, http.StatusBadRequest, fmt.Errorf("field %q is not valid UTF-8", name)
		}
	}
	topics := form["topic"]
	switch limit := h.sse.hub.maxPublishTopics.Load(); {
	case len(topics) == 0:
		return Message{}, http.StatusBadRequest, errors.New("missing topic")
	case int64(len(topics)) > limit:
		return Message{}, http.StatusRequestEntityTooLarge, fmt.Errorf("too many topics: %d (the limit is %d)", len(topics), limit)
	}
	for _, t := range topics {
		switch {
		case len(t) > MaxTopicLength:
			return Message{}, http.StatusRequestEntityTooLarge, fmt.Errorf("topic %.40q... is longer than %d bytes", t, MaxTopicLength)
		case t == "":
			return Message{}, http.StatusBadRequest, errors.New("empty topic")
		case t == "*":
			return Message{}, http.StatusBadRequest, errors.New(`topic "*" is reserved: it is the selector of every topic`)
		case mercureReservedTopic(t, base, h.Path):
			return Message{}, http.StatusBadRequest, fmt.Errorf("topic %q is in the hub's own namespace (%s/...)", t, h.Path)
		}
		if err := mercureCheckString(t); err != nil {
			return Message{}, http.StatusBadRequest, fmt.Errorf("topic %q: %v", t, err)
		}
	}
	m := Message{Topics: topics, Data: form.Get("data"), Type: form.Get("type"), CustomID: form.Get("id")}
	_, m.Private = form["private"] // present at all, whatever its value
	if err := mercureCheckString(m.Type); err != nil {
		return Message{}, http.StatusBadRequest, fmt.Errorf("type: %v", err)
	}
	if err := mercureCheckString(m.CustomID); err != nil {
		return Message{}, http.StatusBadRequest, fmt.Errorf("id: %v", err)
	}
	if v, ok := form["retry"]; ok {
		digits := v[0]
		if digits == "" || strings.TrimLeft(digits, "0123456789") != "" {
			return Message{}, http.StatusBadRequest, fmt.Errorf("retry %q is not a number of milliseconds", digits)
		}
		if m.Retry, err = strconv.ParseInt(digits, 10, 64); err != nil || m.Retry > MaxRetry {
			return Message{}, http.StatusBadRequest, fmt.Errorf("retry %s is longer than a day (%d ms)", digits, MaxRetry)
		}
	}
	if err := h.sse.hub.Validate(m); err != nil {
		return Message{}, http.StatusBadRequest, err
	}
	return m, 0, nil
}

func allValidUTF8(values []string) bool {
	for _, v := range values {
		if !utf8.ValidString(v) {
			return false
		}
	}
	return true
}

// mercureReservedTopic reports whether a topic, resolved against the hub's
// URL, names the hub's own namespace (its path, or under it), where the
// hub's subscription events live: no publisher may forge those. Percent
// escapes of unreserved characters are decoded and dot segments removed
// first, so that /.well-known/%6Dercure and /x/../.well-known/mercure are
// caught too. A topic that is no URL reference names no hub path.
func mercureReservedTopic(topic, base, hubPath string) bool {
	b, err := url.Parse(base)
	if err != nil {
		return false
	}
	u, err := b.Parse(unescapeUnreserved(topic))
	if err != nil {
		return false
	}
	return u.Path == hubPath || strings.HasPrefix(u.Path, hubPath+"/")
}

// unescapeUnreserved decodes the percent escapes of RFC 3986's unreserved
// characters (letters, digits, - . _ ~), which name the same URL either way.
func unescapeUnreserved(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				c := byte(n)
				if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
					b.WriteByte(c)
					i += 2
					continue
				}
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
