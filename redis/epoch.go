package redis

import (
	"context"
	"errors"
	"strconv"

	goredis "github.com/redis/go-redis/v9"
)

// An event id is "<epoch>-<seq>". seq comes from a counter in Redis, so
// it goes backwards whenever Redis does: a restart that loads an older
// snapshot, a failover to a replica that had not caught up. Ids must
// never be handed out twice, so the epoch is bound to the Redis process
// that writes it: the run key holds that process's run_id, which is new
// at every start and differs between a master and its replicas. A script
// that finds another run_id there begins a new epoch before it does
// anything else, and records in the lineage hash how far the old epoch
// reaches in this Redis's data (the seq counter as it found it).
//
// So an id (e, n) names an event of this Redis's timeline exactly when e
// is the current epoch, or the lineage has e with n at most its reach:
// clients resuming from such an id, and nodes whose cursor is such an id,
// carry on without a gap; any other id is from a stretch Redis lost, and
// its holder gets push.reset. A restart that lost nothing costs a new
// epoch string and nothing else.
const epochLua = `
local function epochOf(p, candidate)
  local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  local epoch = redis.call('GET', p .. 'epoch')
  if epoch and redis.call('GET', p .. 'run') == run then return epoch end
  if epoch then redis.call('HSET', p .. 'lineage', epoch, redis.call('GET', p .. 'seq') or '0') end
  redis.call('SET', p .. 'epoch', candidate)
  redis.call('SET', p .. 'run', run)
  return candidate
end
`

// headScript reads the hub's epoch (beginning one when needed) and the
// seq of its newest event, atomically.
var headScript = goredis.NewScript(epochLua + `
local epoch = epochOf(ARGV[1], ARGV[2])
return {tonumber(redis.call('GET', ARGV[1]..'seq') or '0'), epoch}
`)

// head reads the hub's epoch and the seq of its newest event.
func (s *store) head(ctx context.Context) (string, uint64, error) {
	res, err := headScript.Run(ctx, s.client, s.keys, s.prefix, newEpoch()).Slice()
	if err != nil {
		return "", 0, err
	}
	seq, epoch, err := seqAndEpoch(res)
	return epoch, seq, err
}

// continues reports whether the event (epoch, seq) of an earlier epoch is
// in the hub's current timeline: whether Redis kept it when the epoch
// ended.
func (s *store) continues(ctx context.Context, epoch string, seq uint64) (bool, error) {
	reach, err := s.client.HGet(ctx, s.key("lineage"), epoch).Result()
	if errors.Is(err, goredis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	n, err := strconv.ParseUint(reach, 10, 64)
	return err == nil && seq <= n, nil
}
