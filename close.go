package push

// How connections end. A WebSocket closes with a code and a reason; an SSE
// stream, which has no close frame, ends after its last words (a pause
// block, a comment, or a short retry; see sseSession.lastWords).

// CloseSlowConsumer is a close code beyond RFC 6455's: the client fell
// behind and may resume.
const CloseSlowConsumer = 4008

// CloseTryAgainLater is RFC 6455's 1013 (registered in §11.7): the
// connection was paused, and the reason says when to come back.
const CloseTryAgainLater = 1013

// The reasons of the server's close frames, and the error frames a client
// gets while its connection stays open.
const (
	reasonGoingAway     = "server is reloading or stopping"            // 1001
	reasonMaxDuration   = "max_duration reached: reconnect and resume" // 1001
	reasonSlowConsumer  = "slow consumer: reconnect and resume"        // 4008
	reasonResync        = "the hub lost events: reconnect and resume"  // 1012
	reasonRateAbused    = "publish rate exceeded"                      // 1008
	reasonTooManyErrors = "too many errors"                            // 1008
	reasonTokenExpired  = "token expired"                              // 1008
	// reasonPaused is followed by the time to come back at (1013)
	reasonPaused = "paused: come back at "
	// and disconnectedReason (1008), which SSE streams get in a comment

	replyBinary       = "binary messages are not supported"
	replyRateExceeded = "publish rate exceeded: slow down"
	replyNoPublish    = "this endpoint does not accept messages"
	replyNoPublishNow = "this connection may publish to no topic now: it unsubscribed from those it could"
	replyNoSubscribe  = "this endpoint does not allow subscribing to other topics"
	replyCommand      = `a command must be {"subscribe":"<topic>","lastEventId":"<id>"} or {"unsubscribe":"<topic>"}`
)
