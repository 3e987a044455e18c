package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/redlease/redlease"
)

// maxShards is the most shards a queue can have (WithShards).
const maxShards = 1024

// target is a queue the user named: a plain queue or a subscription.
type target struct {
	queue  *redlease.Queue
	topic  string // "" for a plain queue
	sub    string
	shards int
}

// resolveQueue finds the queue called name: "TOPIC/SUB" names a topic's
// subscription when that topic has it, else name is a plain queue with
// shards shards (0: detected from its keys).
func resolveQueue(ctx context.Context, c redis.UniversalClient, prefix, name string, shards int) (target, error) {
	for i := strings.IndexByte(name, '/'); i > 0 && i < len(name)-1; {
		topic, sub := name[:i], name[i+1:]
		ok, err := c.SIsMember(ctx, prefix+":topic:{"+topic+"}:subs", sub).Result()
		if err != nil {
			return target{}, fmt.Errorf("look up subscription %q: %w", name, err)
		}
		if ok {
			q, err := redlease.NewTopic(c, topic, redlease.WithPrefix(prefix)).Subscription(sub)
			if err != nil {
				return target{}, err
			}
			return target{queue: q, topic: topic, sub: sub, shards: 1}, nil
		}
		j := strings.IndexByte(name[i+1:], '/')
		if j < 0 {
			break
		}
		i += j + 1
	}
	if shards == 0 {
		n, err := detectShards(ctx, c, prefix, name)
		if err != nil {
			return target{}, err
		}
		shards = n
	}
	q := redlease.NewQueue(c, name, redlease.WithPrefix(prefix), redlease.WithShards(shards))
	if _, err := q.Stats(ctx); err != nil { // surfaces a bad name at once
		return target{}, err
	}
	return target{queue: q, shards: shards}, nil
}

// detectShards counts a queue's shards from its keys: one EXISTS per
// possible shard's messages hash (which holds every message, dead letter
// and total of the shard), in one round trip. The highest shard found
// counts; with none, one shard.
func detectShards(ctx context.Context, c redis.UniversalClient, prefix, name string) (int, error) {
	cmds := make([]*redis.IntCmd, maxShards)
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range cmds {
			cmds[i] = p.Exists(ctx, prefix+":queue:{"+name+":"+strconv.Itoa(i)+"}:shard:messages")
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("detect shards of %q: %w", name, err)
	}
	n := 1
	for i, cmd := range cmds {
		if cmd.Val() > 0 {
			n = max(n, i+1)
		}
	}
	return n, nil
}
