package push

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"
)

// clientMaxGzipped is the size push.js must stay within, gzipped: the
// issue's budget for the browser client.
const clientMaxGzipped = 6 << 10

// get requests path with headers (name, value pairs) and returns the
// response and its body, as sent.
func getClient(t *testing.T, method, url string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	// set, so the transport neither asks for gzip nor unzips on its own
	req.Header.Set("Accept-Encoding", "identity")
	for i := 0; i < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func gunzip(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// push_client serves push.js and push.d.ts from the module, revalidated by
// ETag, gzipped when asked, and passes every other path on; behind encode
// too, as the demo site has it.
func TestClientServesFiles(t *testing.T) {
	c := startCaddy(t, `
http://127.0.0.1:PORT {
	encode gzip
	push_client /push.js
	@vendored path /vendor/push-client.mjs /vendor/push-client.d.ts
	push_client @vendored
	respond "passed on"
}`)
	for _, tc := range []struct {
		path, contentType string
		want              []byte
	}{
		{"/push.js", "text/javascript; charset=utf-8", clientJS},
		{"/push.d.ts", "application/typescript; charset=utf-8", clientDTS},
		{"/vendor/push-client.mjs", "text/javascript; charset=utf-8", clientJS},
		{"/vendor/push-client.d.ts", "application/typescript; charset=utf-8", clientDTS},
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, body := getClient(t, http.MethodGet, c.URL+tc.path)
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != tc.contentType || !bytes.Equal(body, tc.want) {
				t.Fatalf("%d %q, %d bytes; want 200 %q, %d bytes", resp.StatusCode, resp.Header.Get("Content-Type"), len(body), tc.contentType, len(tc.want))
			}
			etag := resp.Header.Get("ETag")
			if !strings.HasPrefix(etag, `"`) || resp.Header.Get("Cache-Control") != "no-cache" ||
				resp.Header.Get("Content-Encoding") != "" || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
				t.Fatalf("headers %v", resp.Header)
			}

			// gzipped, as pre-compressed; encode leaves it alone
			zresp, zbody := getClient(t, http.MethodGet, c.URL+tc.path, "Accept-Encoding", "br;q=1, gzip;q=0.8")
			if zresp.StatusCode != 200 || zresp.Header.Get("Content-Encoding") != "gzip" || !bytes.Equal(gunzip(t, zbody), tc.want) {
				t.Fatalf("gzip: %d %v", zresp.StatusCode, zresp.Header)
			}
			zetag := zresp.Header.Get("ETag")
			if zetag == etag || !strings.Contains(zresp.Header.Get("Vary"), "Accept-Encoding") {
				t.Fatalf("gzip: ETag %s (identity %s), Vary %q", zetag, etag, zresp.Header.Get("Vary"))
			}
			if _, body := getClient(t, http.MethodGet, c.URL+tc.path, "Accept-Encoding", "gzip;q=0"); !bytes.Equal(body, tc.want) {
				t.Fatal("gzip;q=0 got a gzipped body")
			}

			// revalidation: either tag of the same content is a 304
			for _, tag := range []string{etag, zetag, `"stale", ` + etag} {
				for _, ae := range []string{"identity", "gzip"} {
					resp, body := getClient(t, http.MethodGet, c.URL+tc.path, "If-None-Match", tag, "Accept-Encoding", ae)
					if resp.StatusCode != http.StatusNotModified || len(body) != 0 {
						t.Fatalf("If-None-Match %s, Accept-Encoding %s: %d, %d bytes", tag, ae, resp.StatusCode, len(body))
					}
				}
			}
			if resp, _ := getClient(t, http.MethodGet, c.URL+tc.path, "If-None-Match", `"stale"`); resp.StatusCode != 200 {
				t.Fatalf("a stale ETag: %d", resp.StatusCode)
			}

			resp, body = getClient(t, http.MethodHead, c.URL+tc.path)
			if resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get("ETag") != etag {
				t.Fatalf("HEAD: %d, %d bytes, %v", resp.StatusCode, len(body), resp.Header)
			}
			if resp, _ := getClient(t, http.MethodPost, c.URL+tc.path); resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
				t.Fatalf("POST: %d %v", resp.StatusCode, resp.Header)
			}
		})
	}
	if resp, _ := getClient(t, http.MethodGet, c.URL+"/push.js", "Accept-Encoding", "identity"); resp.Header.Get("X-TypeScript-Types") != "/push.d.ts" {
		t.Errorf("X-TypeScript-Types %q", resp.Header.Get("X-TypeScript-Types"))
	}
	for _, path := range []string{"/", "/push", "/push.mjs", "/x/push.js", "/vendor/other.js"} {
		if resp, body := getClient(t, http.MethodGet, c.URL+path); resp.StatusCode != 200 || string(body) != "passed on" {
			t.Errorf("%s: %d %q, want it passed on", path, resp.StatusCode, body)
		}
	}
}

// push.js stays within its budget: 6 KiB gzipped, as served.
func TestClientSize(t *testing.T) {
	js := clientFiles[0]
	if n := len(js.gzipped); n > clientMaxGzipped {
		t.Fatalf("push.js is %d bytes gzipped, over the %d-byte budget", n, clientMaxGzipped)
	}
	t.Logf("push.js: %d bytes, %d gzipped; push.d.ts: %d bytes", len(js.body), len(js.gzipped), len(clientFiles[1].body))
	// one module, no imports: it must load on its own
	for _, line := range strings.Split(string(clientJS), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "import ") {
			t.Fatalf("push.js imports: %q", line)
		}
	}
}

func TestClientCaddyfile(t *testing.T) {
	caddytest.AssertAdapt(t, `:8080 {
	push_client
	push_client /assets/push.js
	@js path /static/*
	push_client @js
}`, "caddyfile", `{
	"apps": {
		"http": {
			"servers": {
				"srv0": {
					"listen": [
						":8080"
					],
					"routes": [
						{
							"match": [
								{
									"path": [
										"/static/*"
									]
								}
							],
							"handle": [
								{
									"handler": "push_client"
								}
							]
						},
						{
							"handle": [
								{
									"handler": "push_client",
									"path": "/push.js"
								},
								{
									"handler": "push_client",
									"path": "/assets/push.js"
								}
							]
						}
					]
				}
			}
		}
	}
}`)
	for _, tc := range []struct{ input, err string }{
		{"push_client /a.js /b.js", "wrong argument count"},
		{"push_client /a.js {\n\t\tgzip\n\t}", "push_client takes no options, got 'gzip'"},
		{"push_client @nope", "unrecognized matcher name"},
		{"push_client nope", "wrong argument count"},
	} {
		cf := ":8080 {\n\t" + tc.input + "\n}"
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%q: error %v, want %q", tc.input, err, tc.err)
		}
	}
	if err := (&ClientHandler{Path: "push.js"}).Validate(); err == nil {
		t.Error("a path without / is valid")
	}
}
