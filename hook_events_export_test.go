package push

import "testing"

// What package push_test's Redis tests of the events hook use by name:
// the test app, answering every batch with 200, and the events it got
// (their signatures checked against EventsTestSecret).
type EventsTestApp struct{ app *testApp }

// EventsTestSecret is the secret the app checks batches with.
const EventsTestSecret = eventsSecret

// StartEventsTestApp starts the app; it takes batches on /events.
func StartEventsTestApp(t testing.TB) EventsTestApp { return EventsTestApp{okApp(t)} }

// URL is where the app takes batches.
func (a EventsTestApp) URL() string { return a.app.URL + "/events" }

// Events are the events the app got so far.
func (a EventsTestApp) Events(t testing.TB) []hookEvent { return appEvents(t, a.app) }
