package push

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/encode"
)

func init() {
	caddy.RegisterModule(ClientHandler{})
}

// The browser client, as the module serves it: see docs/browser-client.md.
var (
	//go:embed client/push.js
	clientJS []byte
	//go:embed client/push.d.ts
	clientDTS []byte
)

// clientFiles are push.js and push.d.ts ready to serve, compressed once.
var clientFiles = [2]*clientFile{
	newClientFile(clientJS, "text/javascript; charset=utf-8"),
	newClientFile(clientDTS, "application/typescript; charset=utf-8"),
}

// ClientHandler serves push.js, caddy-push's browser client (one ES
// module without dependencies: subscribe over EventSource, connect over
// WebSocket, a presence map), and its TypeScript declarations, push.d.ts,
// from the module itself, so a page imports the client that matches its
// server. Both are sent with an ETag and Cache-Control: no-cache (browsers
// revalidate, and get 304 until the module changes), gzipped for clients
// that accept it, and to any origin (Access-Control-Allow-Origin: *), as a
// page on another site may import the client from its hub.
type ClientHandler struct {
	// The path of push.js. push.d.ts is served beside it, at the same path
	// with .d.ts for .js (/push.js, /push.d.ts), and every other request is
	// passed on. Empty: every request the route's matchers send here gets
	// push.js, or push.d.ts when its path ends in .d.ts. Default: empty
	// (the Caddyfile's push_client without a path sets /push.js).
	Path string `json:"path,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (ClientHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.push_client",
		New: func() caddy.Module { return new(ClientHandler) },
	}
}

// Validate checks the path.
func (h *ClientHandler) Validate() error {
	if h.Path != "" && !strings.HasPrefix(h.Path, "/") {
		return fmt.Errorf("path must start with /, not %q", h.Path)
	}
	return nil
}

// ServeHTTP serves push.js or push.d.ts, or passes the request on.
func (h *ClientHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	f, ok := h.file(r.URL.Path)
	if !ok {
		return next.ServeHTTP(w, r)
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, errors.New("push_client serves GET and HEAD only"))
	}
	gz := slices.Contains(encode.AcceptedEncodings(r, nil), "gzip")
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-cache")
	hdr.Add("Vary", "Accept-Encoding")
	hdr.Set("Access-Control-Allow-Origin", "*")
	hdr.Set("X-Content-Type-Options", "nosniff")
	body, etag := f.body, f.etag
	if gz {
		body, etag = f.gzipped, f.gzipETag
		hdr.Set("Content-Encoding", "gzip")
	}
	hdr.Set("ETag", etag)
	if f == clientFiles[0] {
		// Deno reads the types of an imported module from here
		hdr.Set("X-TypeScript-Types", h.declarationsPath(r.URL.Path))
	}
	if f.matches(r.Header.Get("If-None-Match")) {
		hdr.Del("Content-Encoding")
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	hdr.Set("Content-Type", f.contentType)
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(body)
	}
	return nil
}

// file is the file a request path names, if any.
func (h *ClientHandler) file(path string) (*clientFile, bool) {
	switch {
	case h.Path == "":
		if strings.HasSuffix(path, ".d.ts") {
			return clientFiles[1], true
		}
		return clientFiles[0], true
	case path == h.Path:
		return clientFiles[0], true
	case path == h.declarationsPath(h.Path):
		return clientFiles[1], true
	}
	return nil, false
}

// declarationsPath is where push.d.ts is beside push.js at jsPath.
func (h *ClientHandler) declarationsPath(jsPath string) string {
	return strings.TrimSuffix(jsPath, ".js") + ".d.ts"
}

// clientFile is one of the client's files, with its gzipped form and
// their ETags.
type clientFile struct {
	contentType    string
	body, gzipped  []byte
	etag, gzipETag string
}

func newClientFile(body []byte, contentType string) *clientFile {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	_, _ = zw.Write(body)
	_ = zw.Close()
	sum := sha256.Sum256(body)
	tag := hex.EncodeToString(sum[:12])
	// the gzipped form is another representation, with its own tag, named
	// as Caddy's encode names its own (which strips the suffix from
	// If-None-Match before a request reaches this handler)
	return &clientFile{contentType: contentType, body: body, gzipped: buf.Bytes(),
		etag: `"` + tag + `"`, gzipETag: `"` + tag + `-gzip"`}
}

// matches reports whether an If-None-Match header names either form of
// the file: both are the same content.
func (f *clientFile) matches(ifNoneMatch string) bool {
	for tag := range strings.SplitSeq(ifNoneMatch, ",") {
		tag = strings.TrimPrefix(strings.TrimSpace(tag), "W/")
		if tag == "*" || tag == f.etag || tag == f.gzipETag {
			return true
		}
	}
	return false
}

// Interface guards
var (
	_ caddy.Validator             = (*ClientHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*ClientHandler)(nil)
)
