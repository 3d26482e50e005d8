/*
 * noxs_abi.h - the NoXS guest ABI: the single source of truth.
 *
 * The NoXS region is one ivshmem-plain PCI device (vendor 0x1af4, device
 * 0x1110) per VM; its BAR2 maps a shared-memory file owned by the host
 * toolstack. The region holds:
 *
 *   offset 0                 struct noxs_device_page   (host-written)
 *   offset ctrl_offset[i]    one NOXS_PAGE_SIZE control page per device
 *
 * Each control page starts with struct noxs_ctrl_hdr (the Xenbus-style
 * handshake); host-owned device configuration follows it, and everything
 * the guest may write lives in the second half of the page, from
 * NOXS_CTRL_GUEST_OFFSET on. The guest never writes the device page.
 *
 * Rules (see ../SPEC.md for the prose):
 *   - C99, no dependencies; dual-use by host tooling and guests.
 *   - Little-endian, natural alignment, explicit padding; every struct's
 *     size and every field's offset is pinned by a static assertion below
 *     and mirrored by lightvm/noxs.py (checked by a unit test).
 *   - Append-only: new fields go at the end of a struct (into reserved
 *     space) and NOXS_ABI_VERSION is bumped for any incompatible change.
 *   - IN  = written by the host, read by the guest.
 *     OUT = written by the guest, read by the host (which treats every such
 *           byte as hostile: bounded reads, validated values).
 */
#ifndef NOXS_ABI_H
#define NOXS_ABI_H

#include <stdint.h>

#define NOXS_MAGIC          0x53584f4eu   /* "NOXS" as little-endian bytes */
#define NOXS_ABI_VERSION    1u
#define NOXS_PAGE_SIZE      4096u
#define NOXS_MAX_DEVICES    32u
/* Smallest and largest region a guest accepts (BAR2 size, a power of two). */
#define NOXS_REGION_MIN     (2u * NOXS_PAGE_SIZE)
#define NOXS_REGION_MAX     (64u * NOXS_PAGE_SIZE)

#define NOXS_PCI_VENDOR     0x1af4u
#define NOXS_PCI_DEVICE     0x1110u
#define NOXS_PCI_BAR        2u

#define NOXS_NAME_LEN       64u
#define NOXS_IFNAME_LEN     16u
#define NOXS_MESSAGE_LEN    64u
#define NOXS_APP_LEN        16u

/* Feature bits offered by the host in noxs_device_page.features. */
#define NOXS_FEAT_TSC_HZ      (1ull << 0) /* tsc_hz carries the guest TSC rate */
#define NOXS_FEAT_NMI_DOORBELL (1ull << 1) /* host injects an NMI after writing
                                             a sysctl request */
#define NOXS_FEAT_WAIT_CONFIG (1ull << 2) /* a placeholder page (a prepared shell):
                                             the guest sets NOXS_BOOT_WAITING and
                                             waits until the host rewrites the page
                                             (generation changes), then reads the
                                             real one */
#define NOXS_FEAT_CONSOLE_BELL (1ull << 3) /* with WAIT_CONFIG: the guest may sleep
                                             at its wait point, woken by a byte on
                                             its console UART's receiver (COM1,
                                             ISA IRQ 4), and then says
                                             NOXS_BOOT_WAITING_BELL instead */

/* Device types (noxs_dev_entry.type). */
#define NOXS_DEV_NONE       0u
#define NOXS_DEV_SYSCTL     1u  /* exactly one per VM: power control + boot record */
#define NOXS_DEV_VIF        2u  /* a virtio-net NIC, matched by MAC (dev_mac if set) */
#define NOXS_DEV_VBD        3u  /* a virtio-blk disk, matched by index */

/* Xenbus states, numbered as in Xen's xenbus.h. */
#define NOXS_STATE_UNKNOWN        0u
#define NOXS_STATE_INITIALISING   1u
#define NOXS_STATE_INITWAIT       2u
#define NOXS_STATE_INITIALISED    3u
#define NOXS_STATE_CONNECTED      4u
#define NOXS_STATE_CLOSING        5u
#define NOXS_STATE_CLOSED         6u
#define NOXS_STATE_RECONFIGURING  7u
#define NOXS_STATE_RECONFIGURED   8u

/* sysctl request/ack bits (noxs_sysctl_ctrl.status_req / status_ack). */
#define NOXS_SYSCTL_POWEROFF  (1u << 0)
#define NOXS_SYSCTL_REBOOT    (1u << 1)
#define NOXS_SYSCTL_SUSPEND   (1u << 2)
#define NOXS_SYSCTL_CRASH     (1u << 3)
#define NOXS_SYSCTL_WATCHDOG  (1u << 4)

/* Boot record states (noxs_boot_record.state). */
#define NOXS_BOOT_UNKNOWN     0u  /* guest has not written the record yet */
#define NOXS_BOOT_BOOTING     1u  /* page found and validated */
#define NOXS_BOOT_DEVICES_UP  2u  /* all configured devices initialised */
#define NOXS_BOOT_READY       3u  /* the application is serving */
#define NOXS_BOOT_STOPPING    4u  /* acting on a sysctl request */
#define NOXS_BOOT_HALTED      5u  /* clean poweroff; the next thing is exit */
#define NOXS_BOOT_ERROR       6u  /* fatal error; see error and message */
#define NOXS_BOOT_WAITING     7u  /* NOXS_FEAT_WAIT_CONFIG: waiting for the real page */
#define NOXS_BOOT_WAITING_BELL 8u /* the same, asleep: ring NOXS_FEAT_CONSOLE_BELL
                                     after the rewrite (the vCPU keeps running) */

/* Boot record error codes (noxs_boot_record.error). */
#define NOXS_ERR_NONE         0u
#define NOXS_ERR_BAD_PAGE     1u  /* header fields out of range */
#define NOXS_ERR_NO_DEVICE    2u  /* a configured device was not found */
#define NOXS_ERR_DEVICE       3u  /* a device failed to initialise */
#define NOXS_ERR_APP          4u  /* the application failed */
#define NOXS_ERR_EXCEPTION    5u  /* a CPU exception */

/* Where the TSC frequency came from (noxs_boot_record.tsc_source). */
#define NOXS_TSC_UNKNOWN      0u
#define NOXS_TSC_PAGE         1u  /* the host's hint in the device page */
#define NOXS_TSC_CPUID_15H    2u
#define NOXS_TSC_CPUID_16H    3u
#define NOXS_TSC_HV_LEAF      4u  /* hypervisor leaf 0x40000010 */
#define NOXS_TSC_PIT          5u  /* calibrated against the i8254 PIT */

/* One entry of the device table. 16 bytes. All IN. */
struct noxs_dev_entry {
	uint32_t type;          /* IN  NOXS_DEV_* */
	uint32_t id;            /* IN  index among devices of this type (0, 1, ...) */
	uint32_t backend_id;    /* IN  host-side backend identifier (informational) */
	uint32_t ctrl_offset;   /* IN  byte offset of its control page in the region;
	                               a multiple of NOXS_PAGE_SIZE, >= NOXS_PAGE_SIZE */
};

/* The device page at offset 0 of the region. All IN. */
struct noxs_device_page {
	uint32_t magic;         /* 0   IN  NOXS_MAGIC */
	uint16_t abi_version;   /* 4   IN  NOXS_ABI_VERSION */
	uint16_t header_size;   /* 6   IN  sizeof(struct noxs_device_page) as written */
	uint64_t features;      /* 8   IN  NOXS_FEAT_* bits */
	uint32_t region_size;   /* 16  IN  bytes of the region the host set up */
	uint32_t dev_count;     /* 20  IN  valid entries in devs[], <= NOXS_MAX_DEVICES */
	uint64_t generation;    /* 24  IN  odd while the host rewrites the page (seqlock);
	                                   bumped on every rewrite, e.g. after migration */
	uint64_t host_time_ns;  /* 32  IN  host wall clock (Unix epoch, ns) when written */
	uint64_t tsc_hz;        /* 40  IN  guest TSC rate if NOXS_FEAT_TSC_HZ, else 0 */
	uint8_t  uuid[16];      /* 48  IN  VM UUID (RFC 4122 byte order) */
	char     name[NOXS_NAME_LEN]; /* 64 IN VM name, NUL-padded, not always NUL-terminated */
	uint8_t  reserved[64];  /* 128 IN  zero; room for append-only growth */
	struct noxs_dev_entry devs[NOXS_MAX_DEVICES]; /* 192 .. 704 */
};

/* Header of every control page. 16 bytes. */
struct noxs_ctrl_hdr {
	uint32_t be_state;      /* 0   IN  backend (host) Xenbus state */
	uint32_t be_events;     /* 4   IN  bumped by the host on each be_state/config change */
	uint32_t fe_state;      /* 8   OUT frontend (guest) Xenbus state */
	uint32_t fe_events;     /* 12  OUT bumped by the guest on each fe_state change */
};

/* Offset, within a control page, of the guest-writable half. */
#define NOXS_CTRL_GUEST_OFFSET 2048u

/* Guest boot record, in the sysctl control page. 144 bytes. All OUT. */
struct noxs_boot_record {
	uint32_t state;         /* 0   OUT NOXS_BOOT_* */
	uint32_t error;         /* 4   OUT NOXS_ERR_* when state == ERROR */
	uint64_t tsc_hz;        /* 8   OUT the TSC rate the guest used */
	uint64_t tsc_entry;     /* 16  OUT TSC at the first guest instruction */
	uint64_t tsc_devices_up;/* 24  OUT TSC when all devices were up */
	uint64_t tsc_ready;     /* 32  OUT TSC when the app became ready */
	uint64_t heartbeat;     /* 40  OUT bumped on every interrupt taken (timer, device, NMI) */
	uint64_t app_counter;   /* 48  OUT app-defined (daytime: clients served) */
	uint32_t tsc_source;    /* 56  OUT NOXS_TSC_* */
	uint32_t generation_seen; /* 60 OUT low 32 bits of the page generation last applied */
	char     app[NOXS_APP_LEN];         /* 64  OUT app name, NUL-padded */
	char     message[NOXS_MESSAGE_LEN]; /* 80  OUT last error text, NUL-padded */
};

/* Control page of the sysctl device. */
struct noxs_sysctl_ctrl {
	struct noxs_ctrl_hdr hdr;   /* 0 */
	uint32_t status_req;        /* 16  IN  NOXS_SYSCTL_* requests, set by the host */
	uint8_t  host_pad[NOXS_CTRL_GUEST_OFFSET - 20];
	uint32_t status_ack;        /* 2048 OUT requests the guest has acted on */
	uint32_t guest_pad;         /* 2052 OUT zero */
	struct noxs_boot_record boot; /* 2056 OUT */
};

/* Control page of a vif (virtio-net NIC). */
struct noxs_vif_ctrl {
	struct noxs_ctrl_hdr hdr;   /* 0 */
	uint8_t  mac[6];            /* 16  IN  unicast MAC; matches the virtio-net config */
	uint16_t mtu;               /* 22  IN  MTU in bytes (68..9000) */
	uint8_t  ip[4];             /* 24  IN  IPv4 address, network order bytes */
	uint8_t  gateway[4];        /* 28  IN  IPv4 gateway, 0.0.0.0 for none */
	uint8_t  prefix;            /* 32  IN  prefix length 0..32 */
	uint8_t  vif_pad[3];        /* 33  IN  zero */
	char     bridge[NOXS_IFNAME_LEN]; /* 36 IN host bridge name (informational) */
	uint8_t  dev_mac[6];        /* 52  IN  the virtio-net device's own MAC when it differs
	                                       from mac (a NIC pre-created in a prepared shell,
	                                       before the vif's MAC was known): the guest finds
	                                       its device by dev_mac and sends and receives as
	                                       mac. All zero (old pages): find it by mac. */
	uint8_t  dev_mac_pad[2];    /* 58  IN  zero */
	uint8_t  host_pad[NOXS_CTRL_GUEST_OFFSET - 60];
	uint64_t rx_packets;        /* 2048 OUT */
	uint64_t tx_packets;        /* 2056 OUT */
};

/* Control page of a vbd (virtio-blk disk). */
struct noxs_vbd_ctrl {
	struct noxs_ctrl_hdr hdr;   /* 0 */
	uint64_t sectors;           /* 16  IN  capacity in sectors */
	uint32_t sector_size;       /* 24  IN  bytes per sector (512 or 4096) */
	uint32_t mode;              /* 28  IN  NOXS_VBD_RO or NOXS_VBD_RW */
	uint8_t  host_pad[NOXS_CTRL_GUEST_OFFSET - 32];
	uint64_t reads;             /* 2048 OUT */
	uint64_t writes;            /* 2056 OUT */
};

#define NOXS_VBD_RO 1u
#define NOXS_VBD_RW 2u

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#include <stddef.h>
#define NOXS_ASSERT(c, m) _Static_assert(c, m)
NOXS_ASSERT(sizeof(struct noxs_dev_entry) == 16, "dev_entry size");
NOXS_ASSERT(offsetof(struct noxs_device_page, features) == 8, "features");
NOXS_ASSERT(offsetof(struct noxs_device_page, generation) == 24, "generation");
NOXS_ASSERT(offsetof(struct noxs_device_page, uuid) == 48, "uuid");
NOXS_ASSERT(offsetof(struct noxs_device_page, name) == 64, "name");
NOXS_ASSERT(offsetof(struct noxs_device_page, devs) == 192, "devs");
NOXS_ASSERT(sizeof(struct noxs_device_page) == 704, "device page size");
NOXS_ASSERT(sizeof(struct noxs_ctrl_hdr) == 16, "ctrl hdr size");
NOXS_ASSERT(sizeof(struct noxs_boot_record) == 144, "boot record size");
NOXS_ASSERT(offsetof(struct noxs_sysctl_ctrl, status_ack) == NOXS_CTRL_GUEST_OFFSET, "ack");
NOXS_ASSERT(offsetof(struct noxs_sysctl_ctrl, boot) == 2056, "boot record offset");
NOXS_ASSERT(sizeof(struct noxs_sysctl_ctrl) == 2200, "sysctl ctrl size");
NOXS_ASSERT(offsetof(struct noxs_vif_ctrl, bridge) == 36, "bridge");
NOXS_ASSERT(offsetof(struct noxs_vif_ctrl, dev_mac) == 52, "dev_mac");
NOXS_ASSERT(offsetof(struct noxs_vif_ctrl, rx_packets) == NOXS_CTRL_GUEST_OFFSET, "rx");
NOXS_ASSERT(sizeof(struct noxs_vif_ctrl) == 2064, "vif ctrl size");
NOXS_ASSERT(offsetof(struct noxs_vbd_ctrl, reads) == NOXS_CTRL_GUEST_OFFSET, "reads");
NOXS_ASSERT(sizeof(struct noxs_vbd_ctrl) == 2064, "vbd ctrl size");
NOXS_ASSERT(sizeof(struct noxs_sysctl_ctrl) <= NOXS_PAGE_SIZE, "fits a page");
#undef NOXS_ASSERT
#endif

#endif /* NOXS_ABI_H */
