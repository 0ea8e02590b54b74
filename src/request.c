/*
 * request.c - request objects, recycled through a per-worker free list.
 */
#include "request.h"

#include <stdlib.h>
#include <string.h>

#define REQUEST_CACHE_MAX 4096

struct request *
request_new(struct request_cache *rc)
{
	struct request *req = rc->free;

	if (req != NULL) {
		rc->free = *(struct request **)req;
		rc->nfree--;
	} else if ((req = malloc(sizeof(*req))) == NULL) {
		return NULL;
	}
	memset(req, 0, sizeof(*req));
	return req;
}

void
request_free(struct request_cache *rc, struct request *req)
{
	if (req->reply != NULL)
		evbuffer_free(req->reply);
	if (rc->nfree >= REQUEST_CACHE_MAX) {
		free(req);
		return;
	}
	*(struct request **)req = rc->free;
	rc->free = req;
	rc->nfree++;
}

void
request_cache_clear(struct request_cache *rc)
{
	while (rc->free != NULL) {
		struct request *next = *(struct request **)rc->free;
		free(rc->free);
		rc->free = next;
	}
	rc->nfree = 0;
}
