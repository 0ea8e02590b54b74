/* proto.c - which protocol table serves which kind of upstream. */
#include "proto.h"

const struct proto *
proto_for(enum proto_kind kind)
{
	return kind == PROTO_MEMCACHE ? &memcache_proto : &redis_proto;
}
