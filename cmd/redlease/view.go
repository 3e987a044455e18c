package main

import (
	"time"
	"unicode/utf8"

	"github.com/redlease/redlease"
)

// The JSON shapes of --json output (and the dashboard's data): field names
// are the CLI's contract, apart from the library's Go names.

// statsView is a queue's Stats.
type statsView struct {
	Ready        int64 `json:"ready"`
	Delayed      int64 `json:"delayed"`
	InFlight     int64 `json:"in_flight"`
	Dead         int64 `json:"dead"`
	Enqueued     int64 `json:"enqueued_total"`
	Acked        int64 `json:"acked_total"`
	Nacked       int64 `json:"nacked_total"`
	DeadLettered int64 `json:"dead_lettered_total"`
}

func viewStats(s redlease.Stats) statsView {
	return statsView{Ready: s.Ready, Delayed: s.Delayed, InFlight: s.InFlight, Dead: s.Dead,
		Enqueued: s.Enqueued, Acked: s.Acked, Nacked: s.Nacked, DeadLettered: s.DeadLettered}
}

// queueView is one queue or subscription with its stats.
type queueView struct {
	Name         string    `json:"name"`
	Topic        string    `json:"topic,omitempty"`
	Subscription string    `json:"subscription,omitempty"`
	Shards       int       `json:"shards"`
	Stats        statsView `json:"stats"`
}

// topicView is a topic with its subscriptions.
type topicView struct {
	Name          string      `json:"name"`
	Subscriptions []queueView `json:"subscriptions"`
}

// queuesView is the queues command's output.
type queuesView struct {
	Queues    []queueView `json:"queues"`
	Topics    []topicView `json:"topics"`
	Truncated bool        `json:"truncated"`
}

// payloadView shows a payload as text when it is UTF-8, else as base64.
type payloadView struct {
	Text   *string `json:"payload,omitempty"`
	Binary []byte  `json:"payload_base64,omitempty"`
}

func viewPayload(p []byte) payloadView {
	if utf8.Valid(p) {
		s := string(p)
		return payloadView{Text: &s}
	}
	return payloadView{Binary: p}
}

// messageView is a ready message.
type messageView struct {
	ID       string            `json:"id"`
	Attempts int               `json:"attempts"`
	Headers  map[string]string `json:"headers,omitempty"`
	payloadView
}

// deadView is a dead letter.
type deadView struct {
	ID       string            `json:"id"`
	Attempts int               `json:"attempts"`
	Err      string            `json:"error"`
	DiedAt   time.Time         `json:"died_at"`
	Headers  map[string]string `json:"headers,omitempty"`
	payloadView
}

func viewDead(d redlease.DeadLetter) deadView {
	return deadView{ID: d.ID, Attempts: d.Attempts, Err: d.Err, DiedAt: d.DiedAt.UTC(), Headers: d.Headers, payloadView: viewPayload(d.Payload)}
}

func viewMessage(m redlease.ReadyMessage) messageView {
	return messageView{ID: m.ID, Attempts: m.Attempts, Headers: m.Headers, payloadView: viewPayload(m.Payload)}
}

// lockView is a lock's state.
type lockView struct {
	Name          string       `json:"name"`
	State         string       `json:"state"` // free, held, shared
	Holder        string       `json:"holder,omitempty"`
	TTLMs         int64        `json:"ttl_ms"`
	Fence         int64        `json:"fence_counter"`
	WaiterCount   int          `json:"waiter_count"`
	Waiters       []waiterView `json:"waiters"`
	SharedCount   int          `json:"shared_count"`
	SharedHolders []shareView  `json:"shared_holders"`
}

type waiterView struct {
	Token   string `json:"token"`
	Ticket  int64  `json:"ticket"`
	Shared  bool   `json:"shared"`
	Limit   int    `json:"limit,omitempty"`
	GrantMs int64  `json:"grant_ms"`
}

type shareView struct {
	Token string `json:"token"`
	TTLMs int64  `json:"ttl_ms"`
}

// Lock states.
const (
	stateFree   = "free"
	stateHeld   = "held"
	stateShared = "shared"
)

func viewLock(i redlease.LockInfo) lockView {
	v := lockView{Name: i.Name, State: stateFree, Holder: i.Holder, TTLMs: i.TTL.Milliseconds(), Fence: i.Fence,
		WaiterCount: i.WaiterCount, SharedCount: i.SharedCount, Waiters: []waiterView{}, SharedHolders: []shareView{}}
	switch {
	case i.Shared:
		v.State = stateShared
	case i.Held:
		v.State = stateHeld
	}
	if i.TTL < 0 {
		v.TTLMs = -1
	}
	for _, w := range i.Waiters {
		v.Waiters = append(v.Waiters, waiterView{Token: w.Token, Ticket: w.Ticket, Shared: w.Shared, Limit: w.Limit, GrantMs: w.Grant.Milliseconds()})
	}
	for _, s := range i.SharedHolders {
		v.SharedHolders = append(v.SharedHolders, shareView{Token: s.Token, TTLMs: s.TTL.Milliseconds()})
	}
	return v
}

// locksView is the locks command's output.
type locksView struct {
	Locks     []lockView `json:"locks"`
	Truncated bool       `json:"truncated"`
}
