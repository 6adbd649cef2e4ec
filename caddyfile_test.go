package push

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
)

func intPtr(n int) *int { return &n }

func dur(d time.Duration) caddy.Duration { return caddy.Duration(d) }

func durPtr(d time.Duration) *caddy.Duration { v := caddy.Duration(d); return &v }

// checkErr fails unless err is nil when want is empty, or holds want.
func checkErr(t *testing.T, input string, err error, want string) bool {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("unexpected error: %v\ninput:\n%s", err, input)
	case want != "" && err == nil:
		t.Errorf("no error, want one with %q\ninput:\n%s", want, input)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Errorf("error %q does not contain %q\ninput:\n%s", err, want, input)
	default:
		return want == ""
	}
	return false
}

func TestCaddyfilePushGlobalOption(t *testing.T) {
	memory := json.RawMessage(`{"broker":"memory"}`)
	for _, tc := range []struct {
		name  string
		input string
		want  map[string]*HubConfig
		err   string
	}{
		{name: "bare", input: `push`, want: map[string]*HubConfig{}},
		{name: "engine options", input: "push {\n\tengine off\n\tio_uring on\n}", want: map[string]*HubConfig{}},
		{name: "engine option, bad value", input: "push {\n\tengine maybe\n}", err: "engine must be on or off, not 'maybe'"},
		{name: "io_uring, no value", input: "push {\n\tio_uring\n}", err: "wrong argument count"},
		{name: "empty block", input: "push {\n}", want: map[string]*HubConfig{}},
		{name: "hub without block", input: "push {\n\thub default\n}", want: map[string]*HubConfig{"default": {}}},
		{name: "hub with empty block", input: "push {\n\thub default {\n\t}\n}", want: map[string]*HubConfig{"default": {}}},
		{
			name: "every hub option",
			input: `push {
				hub default {
					history 1000
					history_ttl 1h
					history_max_bytes 64MiB
					idempotency_window 10m
					broker memory
				}
			}`,
			want: map[string]*HubConfig{"default": {
				History: intPtr(1000), HistoryTTL: dur(time.Hour), HistoryMaxBytes: 64 << 20, IdempotencyWindow: durPtr(10 * time.Minute), BrokerRaw: memory,
			}},
		},
		{
			name: "broker first, then more options",
			input: `push {
				hub a {
					broker memory
					history 5
				}
			}`,
			want: map[string]*HubConfig{"a": {History: intPtr(5), BrokerRaw: memory}},
		},
		{name: "broker memory with empty block", input: "push {\n\thub a {\n\t\tbroker memory {\n\t\t}\n\t}\n}", want: map[string]*HubConfig{"a": {BrokerRaw: memory}}},
		{name: "history 0 keeps none", input: "push {\n\thub a {\n\t\thistory 0\n\t}\n}", want: map[string]*HubConfig{"a": {History: intPtr(0)}}},
		{name: "history_ttl in days", input: "push {\n\thub a {\n\t\thistory_ttl 1d\n\t}\n}", want: map[string]*HubConfig{"a": {HistoryTTL: dur(24 * time.Hour)}}},
		{name: "idempotency_window 0 ignores keys", input: "push {\n\thub a {\n\t\tidempotency_window 0\n\t}\n}", want: map[string]*HubConfig{"a": {IdempotencyWindow: durPtr(0)}}},
		{name: "max_publish_topics", input: "push {\n\thub a {\n\t\tmax_publish_topics 100\n\t}\n}", want: map[string]*HubConfig{"a": {MaxPublishTopics: 100}}},
		{name: "history_max_bytes plain", input: "push {\n\thub a {\n\t\thistory_max_bytes 4096\n\t}\n}", want: map[string]*HubConfig{"a": {HistoryMaxBytes: 4096}}},
		{
			name: "several hubs",
			input: `push {
				hub default {
					history 10
				}
				hub chat
				hub feed {
					history_ttl 5m
				}
			}`,
			want: map[string]*HubConfig{
				"default": {History: intPtr(10)},
				"chat":    {},
				"feed":    {HistoryTTL: dur(5 * time.Minute)},
			},
		},

		{name: "stray argument", input: `push extra`, err: "wrong argument count or unexpected line ending after 'extra'"},
		{name: "unknown option", input: "push {\n\tbogus 1\n}", err: "unrecognized push option 'bogus'"},
		{name: "hub option outside a hub", input: "push {\n\thistory 5\n}", err: "unrecognized push option 'history'"},
		{name: "hub without name", input: "push {\n\thub\n}", err: "wrong argument count or unexpected line ending after 'hub'"},
		{name: "hub with two names", input: "push {\n\thub a b\n}", err: "wrong argument count or unexpected line ending after 'b'"},
		{name: "hub name with a colon", input: "push {\n\thub a:b\n}", err: `invalid hub name "a:b": use only letters, digits, '_', '.' and '-'`},
		{name: "hub name with a brace", input: "push {\n\thub {x}y\n}", err: `invalid hub name "{x}y"`},
		{name: "hub name with a slash", input: "push {\n\thub a/b\n}", err: `invalid hub name "a/b"`},
		{name: "hub name with every allowed kind", input: "push {\n\thub Chat_1.eu-west\n}", want: map[string]*HubConfig{"Chat_1.eu-west": {}}},
		{name: "duplicate hub", input: "push {\n\thub a\n\thub a {\n\t\thistory 1\n\t}\n}", err: "hub 'a' is defined more than once"},
		{name: "unknown hub option", input: "push {\n\thub a {\n\t\tsize 5\n\t}\n}", err: "unrecognized hub option 'size'"},
		{name: "duplicate hub option", input: "push {\n\thub a {\n\t\thistory 1\n\t\thistory 2\n\t}\n}", err: "hub option 'history' given more than once"},
		{name: "duplicate broker", input: "push {\n\thub a {\n\t\tbroker memory\n\t\tbroker memory\n\t}\n}", err: "hub option 'broker' given more than once"},
		{name: "history without value", input: "push {\n\thub a {\n\t\thistory\n\t}\n}", err: "wrong argument count or unexpected line ending after 'history'"},
		{name: "history two values", input: "push {\n\thub a {\n\t\thistory 1 2\n\t}\n}", err: "wrong argument count or unexpected line ending after '2'"},
		{name: "history negative", input: "push {\n\thub a {\n\t\thistory -1\n\t}\n}", err: "invalid history '-1': want a whole number, 0 or more"},
		{name: "history not a number", input: "push {\n\thub a {\n\t\thistory lots\n\t}\n}", err: "invalid history 'lots'"},
		{name: "history fraction", input: "push {\n\thub a {\n\t\thistory 1.5\n\t}\n}", err: "invalid history '1.5'"},
		{name: "history overflow", input: "push {\n\thub a {\n\t\thistory 99999999999999999999\n\t}\n}", err: "invalid history '99999999999999999999'"},
		{name: "history_ttl not a duration", input: "push {\n\thub a {\n\t\thistory_ttl forever\n\t}\n}", err: "invalid history_ttl 'forever'"},
		{name: "history_ttl negative", input: "push {\n\thub a {\n\t\thistory_ttl -1h\n\t}\n}", err: "invalid history_ttl '-1h'"},
		{name: "history_ttl without unit", input: "push {\n\thub a {\n\t\thistory_ttl 60\n\t}\n}", err: "invalid history_ttl '60'"},
		{name: "idempotency_window negative", input: "push {\n\thub a {\n\t\tidempotency_window -1m\n\t}\n}", err: "invalid idempotency_window '-1m'"},
		{name: "idempotency_window not a duration", input: "push {\n\thub a {\n\t\tidempotency_window long\n\t}\n}", err: "invalid idempotency_window 'long'"},
		{name: "idempotency_window two values", input: "push {\n\thub a {\n\t\tidempotency_window 1m 2m\n\t}\n}", err: "wrong argument count or unexpected line ending after '2m'"},
		{name: "history_max_bytes zero", input: "push {\n\thub a {\n\t\thistory_max_bytes 0\n\t}\n}", err: "invalid history_max_bytes '0'"},
		{name: "history_max_bytes not a size", input: "push {\n\thub a {\n\t\thistory_max_bytes big\n\t}\n}", err: "invalid history_max_bytes 'big'"},
		{name: "history_max_bytes negative", input: "push {\n\thub a {\n\t\thistory_max_bytes -1KiB\n\t}\n}", err: "invalid history_max_bytes '-1KiB'"},
		{name: "max_publish_topics zero", input: "push {\n\thub a {\n\t\tmax_publish_topics 0\n\t}\n}", err: "invalid max_publish_topics '0': want 1 or more"},
		{name: "max_publish_topics negative", input: "push {\n\thub a {\n\t\tmax_publish_topics -1\n\t}\n}", err: "invalid max_publish_topics '-1'"},
		{name: "max_publish_topics two values", input: "push {\n\thub a {\n\t\tmax_publish_topics 1 2\n\t}\n}", err: "wrong argument count or unexpected line ending after '2'"},
		{name: "broker without name", input: "push {\n\thub a {\n\t\tbroker\n\t}\n}", err: "wrong argument count or unexpected line ending after 'broker'"},
		{name: "unknown broker", input: "push {\n\thub a {\n\t\tbroker nope\n\t}\n}", err: "getting module named 'push.brokers.nope'"},
		{name: "broker memory with argument", input: "push {\n\thub a {\n\t\tbroker memory fast\n\t}\n}", err: "wrong argument count or unexpected line ending after 'fast'"},
		{name: "broker memory with option", input: "push {\n\thub a {\n\t\tbroker memory {\n\t\t\tsize 1\n\t\t}\n\t}\n}", err: "broker memory takes no options, got 'size'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app := new(App)
			err := app.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if !checkErr(t, tc.input, err, tc.err) {
				return
			}
			if !reflect.DeepEqual(app.Hubs, tc.want) {
				got, _ := json.Marshal(app.Hubs)
				want, _ := json.Marshal(tc.want)
				t.Errorf("hubs:\n got %s\nwant %s", got, want)
			}
		})
	}
}

func TestCaddyfileParseGlobalOption(t *testing.T) {
	input := "push {\n\thub default {\n\t\thistory 7\n\t\tbroker memory\n\t}\n}"
	v, err := parseGlobalOption(caddyfile.NewTestDispenser(input), nil)
	if err != nil {
		t.Fatal(err)
	}
	app, ok := v.(httpcaddyfile.App)
	if !ok {
		t.Fatalf("parseGlobalOption returned %T, want httpcaddyfile.App", v)
	}
	if app.Name != "push" {
		t.Errorf("app name %q, want push", app.Name)
	}
	if want := `{"hubs":{"default":{"history":7,"broker":{"broker":"memory"}}}}`; string(app.Value) != want {
		t.Errorf("app JSON\n got %s\nwant %s", app.Value, want)
	}

	_, err = parseGlobalOption(caddyfile.NewTestDispenser(input), app)
	checkErr(t, input, err, "push global option given more than once")

	_, err = parseGlobalOption(caddyfile.NewTestDispenser("push {\n\tnope\n}"), nil)
	checkErr(t, "push {nope}", err, "unrecognized push option 'nope'")
}

func TestCaddyfilePushSSE(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input string
		want  SSEHandler
		err   string
	}{
		{name: "bare", input: `push_sse`},
		{name: "empty block", input: "push_sse {\n}"},
		{
			name: "every option",
			input: `push_sse {
				hub default
				topics news user/{http.auth.user.id}
				retry 3s
				keepalive 15s
				max_duration 30m
				pause_for 5m
				max_connections 20000
			}`,
			want: SSEHandler{
				Endpoint: Endpoint{Hub: "default", Topics: []string{"news", "user/{http.auth.user.id}"}, MaxConnections: 20000,
					MaxDuration: dur(30 * time.Minute), PauseFor: dur(5 * time.Minute)},
				Retry:     dur(3 * time.Second),
				Keepalive: dur(15 * time.Second),
			},
		},
		{name: "one topic with placeholder", input: "push_sse {\n\ttopics chat/{query.room}\n}", want: SSEHandler{Endpoint: Endpoint{Topics: []string{"chat/{query.room}"}}}},
		{name: "retry in ms", input: "push_sse {\n\tretry 1500ms\n}", want: SSEHandler{Retry: dur(1500 * time.Millisecond)}},
		{name: "retry 0 means default", input: "push_sse {\n\tretry 0\n}"},
		{name: "max_duration in days", input: "push_sse {\n\tmax_duration 1d\n}", want: SSEHandler{Endpoint: Endpoint{MaxDuration: dur(24 * time.Hour)}}},
		{name: "pause_for without a value", input: "push_sse {\n\tpause_for\n}", err: "wrong argument count or unexpected line ending after 'pause_for'"},
		{name: "pause_for not a duration", input: "push_sse {\n\tpause_for soon\n}", err: "soon"},
		{name: "max_connections 0", input: "push_sse {\n\tmax_connections 0\n}"},
		{name: "hub only", input: "push_sse {\n\thub chat\n}", want: SSEHandler{Endpoint: Endpoint{Hub: "chat"}}},
		{name: "ipv6_prefix", input: "push_sse {\n\tmax_connections_per_ip 4\n\tipv6_prefix 56\n}", want: SSEHandler{Endpoint: Endpoint{MaxConnectionsPerIP: 4, IPv6Prefix: 56}}},
		{name: "ipv6_prefix 128", input: "push_sse {\n\tipv6_prefix 128\n}", want: SSEHandler{Endpoint: Endpoint{IPv6Prefix: 128}}},
		{name: "ipv6_prefix 0", input: "push_sse {\n\tipv6_prefix 0\n}", err: "invalid ipv6_prefix '0': want bits from 1 to 128"},
		{name: "ipv6_prefix 129", input: "push_sse {\n\tipv6_prefix 129\n}", err: "invalid ipv6_prefix '129'"},
		{name: "ipv6_prefix with a slash", input: "push_sse {\n\tipv6_prefix /64\n}", err: "invalid ipv6_prefix '/64'"},

		{name: "stray argument", input: `push_sse /events`, err: "wrong argument count or unexpected line ending after '/events'"},
		{name: "unknown subdirective", input: "push_sse {\n\tbogus 1\n}", err: "unrecognized push_sse subdirective 'bogus'"},
		{name: "ws option on sse", input: "push_sse {\n\tping_interval 30s\n}", err: "unrecognized push_sse subdirective 'ping_interval'"},
		{name: "publish option on sse", input: "push_sse {\n\tmax_body 1MiB\n}", err: "unrecognized push_sse subdirective 'max_body'"},
		{name: "duplicate retry", input: "push_sse {\n\tretry 1s\n\tretry 2s\n}", err: "push_sse option 'retry' given more than once"},
		{name: "duplicate topics", input: "push_sse {\n\ttopics a\n\ttopics b\n}", err: "push_sse option 'topics' given more than once"},
		{name: "duplicate hub", input: "push_sse {\n\thub a\n\thub b\n}", err: "push_sse option 'hub' given more than once"},
		{name: "hub without name", input: "push_sse {\n\thub\n}", err: "wrong argument count or unexpected line ending after 'hub'"},
		{name: "hub with two names", input: "push_sse {\n\thub a b\n}", err: "wrong argument count or unexpected line ending after 'b'"},
		{name: "topics without topic", input: "push_sse {\n\ttopics\n}", err: "wrong argument count or unexpected line ending after 'topics'"},
		{name: "retry without value", input: "push_sse {\n\tretry\n}", err: "wrong argument count or unexpected line ending after 'retry'"},
		{name: "retry two values", input: "push_sse {\n\tretry 1s 2s\n}", err: "wrong argument count or unexpected line ending after '2s'"},
		{name: "retry not a duration", input: "push_sse {\n\tretry soon\n}", err: "invalid retry 'soon'"},
		{name: "retry negative", input: "push_sse {\n\tretry -1s\n}", err: "invalid retry '-1s'"},
		{name: "keepalive not a duration", input: "push_sse {\n\tkeepalive 15\n}", err: "invalid keepalive '15'"},
		{name: "keepalive negative", input: "push_sse {\n\tkeepalive -15s\n}", err: "invalid keepalive '-15s'"},
		{name: "max_duration not a duration", input: "push_sse {\n\tmax_duration half-hour\n}", err: "invalid max_duration 'half-hour'"},
		{name: "max_connections negative", input: "push_sse {\n\tmax_connections -1\n}", err: "invalid max_connections '-1': want a whole number, 0 or more"},
		{name: "max_connections not a number", input: "push_sse {\n\tmax_connections many\n}", err: "invalid max_connections 'many'"},
		{name: "max_connections fraction", input: "push_sse {\n\tmax_connections 1.5\n}", err: "invalid max_connections '1.5'"},
		{name: "max_connections without value", input: "push_sse {\n\tmax_connections\n}", err: "wrong argument count or unexpected line ending after 'max_connections'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h SSEHandler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if checkErr(t, tc.input, err, tc.err) && !reflect.DeepEqual(h, tc.want) {
				t.Errorf("handler:\n got %+v\nwant %+v", h, tc.want)
			}
		})
	}
}

func TestCaddyfilePushPublish(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input string
		want  PublishHandler
		err   string
	}{
		{name: "bare", input: `push_publish`},
		{name: "empty block", input: "push_publish {\n}"},
		{
			name: "hub, token and max_body",
			input: `push_publish {
				hub default
				token {env.PUSH_TOKEN}
				max_body 1MiB
			}`,
			want: PublishHandler{Hub: "default", Token: "{env.PUSH_TOKEN}", MaxBody: 1 << 20},
		},
		{
			name: "jwt options",
			input: `push_publish {
				jwt_key {env.PUSH_JWT_KEY}
				jwt_alg HS256
				cookie_name pushAuth
			}`,
			want: PublishHandler{JWT: JWT{JWTKey: "{env.PUSH_JWT_KEY}", JWTAlg: "HS256", CookieName: "pushAuth"}},
		},
		{name: "anonymous", input: "push_publish {\n\tanonymous\n}", want: PublishHandler{Anonymous: true}},
		{name: "max_body KiB", input: "push_publish {\n\tmax_body 64KiB\n}", want: PublishHandler{MaxBody: 64 << 10}},
		{name: "max_body MB is decimal", input: "push_publish {\n\tmax_body 1MB\n}", want: PublishHandler{MaxBody: 1000000}},
		{name: "max_body bytes", input: "push_publish {\n\tmax_body 1048576\n}", want: PublishHandler{MaxBody: 1 << 20}},
		{name: "max_body lowercase unit", input: "push_publish {\n\tmax_body 2mib\n}", want: PublishHandler{MaxBody: 2 << 20}},
		{name: "max_body fraction", input: "push_publish {\n\tmax_body 1.5KiB\n}", want: PublishHandler{MaxBody: 1536}},
		{name: "max_body largest", input: "push_publish {\n\tmax_body 1TiB\n}", want: PublishHandler{MaxBody: 1 << 40}},

		{name: "stray argument", input: `push_publish /publish`, err: "wrong argument count or unexpected line ending after '/publish'"},
		{name: "unknown subdirective", input: "push_publish {\n\ttopics a\n}", err: "unrecognized push_publish subdirective 'topics'"},
		{name: "duplicate token", input: "push_publish {\n\ttoken a\n\ttoken b\n}", err: "push_publish option 'token' given more than once"},
		{name: "duplicate max_body", input: "push_publish {\n\tmax_body 1KiB\n\tmax_body 2KiB\n}", err: "push_publish option 'max_body' given more than once"},
		{name: "hub without name", input: "push_publish {\n\thub\n}", err: "wrong argument count or unexpected line ending after 'hub'"},
		{name: "token without value", input: "push_publish {\n\ttoken\n}", err: "wrong argument count or unexpected line ending after 'token'"},
		{name: "token with two values", input: "push_publish {\n\ttoken a b\n}", err: "wrong argument count or unexpected line ending after 'b'"},
		{name: "jwt_key without value", input: "push_publish {\n\tjwt_key\n}", err: "wrong argument count or unexpected line ending after 'jwt_key'"},
		{name: "anonymous with argument", input: "push_publish {\n\tanonymous yes\n}", err: "wrong argument count or unexpected line ending after 'yes'"},
		{name: "max_body without value", input: "push_publish {\n\tmax_body\n}", err: "wrong argument count or unexpected line ending after 'max_body'"},
		{name: "max_body zero", input: "push_publish {\n\tmax_body 0\n}", err: "invalid max_body '0': want a size such as 64KiB or 1MiB"},
		{name: "max_body not a size", input: "push_publish {\n\tmax_body huge\n}", err: "invalid max_body 'huge'"},
		{name: "max_body negative", input: "push_publish {\n\tmax_body -1\n}", err: "invalid max_body '-1'"},
		{name: "max_body unknown unit", input: "push_publish {\n\tmax_body 1XB\n}", err: "invalid max_body '1XB'"},
		{name: "max_body too large", input: "push_publish {\n\tmax_body 2TiB\n}", err: "invalid max_body '2TiB'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h PublishHandler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if checkErr(t, tc.input, err, tc.err) && !reflect.DeepEqual(h, tc.want) {
				t.Errorf("handler:\n got %+v\nwant %+v", h, tc.want)
			}
		})
	}
}

func TestCaddyfileAdaptFullExample(t *testing.T) {
	caddytest.AssertAdapt(t, `{
	push {
		hub default {
			history 500
			history_ttl 30m
			history_max_bytes 16MiB
			idempotency_window 15m
			broker memory
		}
		hub chat {
			history 0
			idempotency_window 0
		}
	}
}

example.com {
	encode gzip
	push_sse /events {
		hub default
		topics news user/{http.auth.user.id}
		retry 3s
		keepalive 15s
		max_duration 30m
		max_connections 20000
	}
	push_sse /rooms {
		hub chat
		topics chat/{query.room}
	}
	push_publish /publish {
		hub default
		token {env.PUSH_TOKEN}
		max_body 64KiB
	}
	push_publish /publish/jwt {
		jwt_key {env.PUSH_JWT_KEY}
		jwt_alg HS256
		cookie_name pushAuth
	}
	push_publish /publish/open {
		hub chat
		anonymous
	}
	file_server
}
`, "caddyfile", `{
	"apps": {
		"http": {
			"servers": {
				"srv0": {
					"listen": [
						":443"
					],
					"routes": [
						{
							"match": [
								{
									"host": [
										"example.com"
									]
								}
							],
							"handle": [
								{
									"handler": "subroute",
									"routes": [
										{
											"handle": [
												{
													"encodings": {
														"gzip": {}
													},
													"handler": "encode",
													"prefer": [
														"gzip"
													]
												}
											]
										},
										{
											"handle": [
												{
													"handler": "push_sse",
													"hub": "default",
													"keepalive": 15000000000,
													"max_connections": 20000,
													"max_duration": 1800000000000,
													"retry": 3000000000,
													"topics": [
														"news",
														"user/{http.auth.user.id}"
													]
												}
											],
											"match": [
												{
													"path": [
														"/events"
													]
												}
											]
										},
										{
											"handle": [
												{
													"handler": "push_sse",
													"hub": "chat",
													"topics": [
														"chat/{http.request.uri.query.room}"
													]
												}
											],
											"match": [
												{
													"path": [
														"/rooms"
													]
												}
											]
										},
										{
											"handle": [
												{
													"anonymous": true,
													"handler": "push_publish",
													"hub": "chat"
												}
											],
											"match": [
												{
													"path": [
														"/publish/open"
													]
												}
											]
										},
										{
											"handle": [
												{
													"cookie_name": "pushAuth",
													"handler": "push_publish",
													"jwt_alg": "HS256",
													"jwt_key": "{env.PUSH_JWT_KEY}"
												}
											],
											"match": [
												{
													"path": [
														"/publish/jwt"
													]
												}
											]
										},
										{
											"handle": [
												{
													"handler": "push_publish",
													"hub": "default",
													"max_body": 65536,
													"token": "{env.PUSH_TOKEN}"
												}
											],
											"match": [
												{
													"path": [
														"/publish"
													]
												}
											]
										},
										{
											"handle": [
												{
													"handler": "file_server",
													"hide": [
														"./Caddyfile"
													]
												}
											]
										}
									]
								}
							],
							"terminal": true
						}
					]
				}
			}
		},
		"push": {
			"hubs": {
				"chat": {
					"history": 0,
					"idempotency_window": 0
				},
				"default": {
					"history": 500,
					"history_ttl": 1800000000000,
					"history_max_bytes": 16777216,
					"idempotency_window": 900000000000,
					"broker": {
						"broker": "memory"
					}
				}
			}
		}
	}
}`)
}

// jsonRoute and jsonHandler are the parts of Caddy's HTTP JSON config that
// say which handler runs in what order.
type jsonRoute struct {
	Handle []json.RawMessage `json:"handle"`
}

type jsonHandler struct {
	Handler string      `json:"handler"`
	Routes  []jsonRoute `json:"routes"`
}

// handlerOrder lists the handlers of a server's routes, depth first, in
// the order a request meets them.
func handlerOrder(t *testing.T, routes []jsonRoute) []string {
	t.Helper()
	var names []string
	for _, r := range routes {
		for _, raw := range r.Handle {
			var h jsonHandler
			if err := json.Unmarshal(raw, &h); err != nil {
				t.Fatalf("decoding handler %s: %v", raw, err)
			}
			names = append(names, h.Handler)
			names = append(names, handlerOrder(t, h.Routes)...)
		}
	}
	return names
}

// serverHandlers adapts a Caddyfile with one server and returns its
// handler order.
func serverHandlers(t *testing.T, cf string) []string {
	t.Helper()
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []jsonRoute `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(adapt(t, cf), &cfg); err != nil {
		t.Fatal(err)
	}
	if n := len(cfg.Apps.HTTP.Servers); n != 1 {
		t.Fatalf("%d servers, want 1", n)
	}
	for _, srv := range cfg.Apps.HTTP.Servers {
		return handlerOrder(t, srv.Routes)
	}
	return nil
}

// assertBefore fails unless every a in names comes before every b.
func assertBefore(t *testing.T, names []string, a, b string) {
	t.Helper()
	lastA, firstB := -1, len(names)
	for i, n := range names {
		if n == a {
			lastA = i
		}
		if n == b && i < firstB {
			firstB = i
		}
	}
	if lastA < 0 || firstB == len(names) {
		t.Errorf("handler order %v lacks %s or %s", names, a, b)
	} else if lastA > firstB {
		t.Errorf("handler order %v: %s must come before %s", names, a, b)
	}
}

func TestCaddyfileAdaptDirectiveOrder(t *testing.T) {
	// written in the wrong order on purpose: Caddy sorts directives
	names := serverHandlers(t, `http://localhost:9 {
	respond /other "other"
	push_publish /publish
	push_sse /events
	encode gzip
	basic_auth /publish {
		bob $2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG
	}
}`)
	assertBefore(t, names, "authentication", "push_publish")
	assertBefore(t, names, "authentication", "push_sse")
	assertBefore(t, names, "encode", "push_sse")
	assertBefore(t, names, "encode", "push_publish")
	assertBefore(t, names, "push_sse", "static_response")
	assertBefore(t, names, "push_publish", "static_response")
}

func TestCaddyfileValidateUnknownHub(t *testing.T) {
	for _, tc := range []struct {
		name, caddyfile, err string
	}{
		{
			name:      "push_sse",
			caddyfile: "http://localhost:9 {\n\tpush_sse {\n\t\thub nope\n\t}\n}\n",
			err:       `unknown hub "nope": define it in the push global option`,
		},
		{
			name:      "push_publish",
			caddyfile: "http://localhost:9 {\n\tpush_publish {\n\t\thub nope\n\t\tanonymous\n\t}\n}\n",
			err:       `unknown hub "nope": define it in the push global option`,
		},
		{
			name:      "hub of another name defined",
			caddyfile: "{\n\tpush {\n\t\thub chat\n\t}\n}\nhttp://localhost:9 {\n\tpush_sse {\n\t\thub nope\n\t}\n}\n",
			err:       `unknown hub "nope"`,
		},
		{
			name:      "defined hub",
			caddyfile: "{\n\tpush {\n\t\thub chat\n\t}\n}\nhttp://localhost:9 {\n\tpush_sse {\n\t\thub chat\n\t}\n\tpush_publish /publish {\n\t\thub chat\n\t\tanonymous\n\t}\n}\n",
		},
		{
			name:      "default hub needs no push option",
			caddyfile: "http://localhost:9 {\n\tpush_sse {\n\t\thub default\n\t}\n\tpush_publish /publish {\n\t\tanonymous\n\t}\n}\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkErr(t, tc.caddyfile, caddyValidate(adapt(t, tc.caddyfile)), tc.err)
		})
	}
}

// A hub name outside [A-Za-z0-9_.-]+ in JSON config is refused at load,
// with the hub named: two hubs could otherwise share Redis keys ("a" and
// "a:t" both own push:a:t:...).
func TestHubNameAtLoad(t *testing.T) {
	for _, tc := range []struct{ name, err string }{
		{"a:t", `loading hub "a:t": invalid hub name "a:t": use only letters, digits, '_', '.' and '-'`},
		{"{tag}", `loading hub "{tag}": invalid hub name`},
		{"café", `invalid hub name "café"`},
		{"a b", `invalid hub name "a b"`},
		{"", "hub name must not be empty"},
		{"Chat_1.eu-west", ""},
	} {
		hubs, _ := json.Marshal(map[string]any{tc.name: map[string]any{}})
		cfg := `{"apps":{"push":{"hubs":` + string(hubs) + `}}}`
		checkErr(t, cfg, caddyValidate([]byte(cfg)), tc.err)
	}
}
