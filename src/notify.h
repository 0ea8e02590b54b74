/*
 * notify.h - tell the service manager how we are (systemd's sd_notify
 * protocol: one datagram per state change to $NOTIFY_SOCKET). Does nothing
 * when NOTIFY_SOCKET is unset, so it is safe to call everywhere.
 */
#ifndef SIDEPOOL_NOTIFY_H
#define SIDEPOOL_NOTIFY_H

int notify_send(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
