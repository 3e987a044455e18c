package redlease

import (
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// clusterSlots is the number of Redis Cluster hash slots.
const clusterSlots = 16384

// hashTag is the part of key that Redis Cluster hashes: the first {tag}.
func hashTag(key string) string {
	if s := strings.IndexByte(key, '{'); s >= 0 {
		if e := strings.IndexByte(key[s+1:], '}'); e > 0 {
			return key[s+1 : s+1+e]
		}
	}
	return key
}

// slot is the Redis Cluster slot of key: CRC16 of its hash tag.
func slot(key string) uint16 { return crc16(hashTag(key)) % clusterSlots }

// nameSlot is the slot of a lock name, hashed as a whole (braces in it
// mean nothing): the slot that the key prefix:{name} of a brace-free name
// has too.
func nameSlot(name string) uint16 { return crc16(name) % clusterSlots }

// crc16 is CRC16/XMODEM, the checksum Redis Cluster hashes keys with.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// slotTags holds, for each slot, the shortest base-36 number whose CRC16
// is that slot: a brace-free hash tag that puts a key in the slot. Lock keys
// carry the tag of their name's slot, so that a lease and its slot's fence
// counter always share one slot, whatever the name.
var slotTags = sync.OnceValue(func() *[clusterSlots]string {
	var tags [clusterSlots]string
	left := clusterSlots
	for i := uint64(0); left > 0; i++ { // ends: about 200,000 numbers cover every slot
		t := strconv.FormatUint(i, 36)
		if s := nameSlot(t); tags[s] == "" {
			tags[s] = t
			left--
		}
	}
	return &tags
})

// slotTag is the hash tag of slot s (s < clusterSlots).
func slotTag(s uint16) string { return slotTags()[s] }

// slotsOf tells which keys one script call may touch together on c.
func slotsOf(c redis.UniversalClient) func(key string) string {
	switch c.(type) {
	case *redis.Client:
		return func(string) string { return "" }
	case *redis.ClusterClient:
		return func(key string) string { return strconv.Itoa(int(slot(key))) }
	}
	return hashTag // a wrapper: only keys with the same hash tag surely live together
}
