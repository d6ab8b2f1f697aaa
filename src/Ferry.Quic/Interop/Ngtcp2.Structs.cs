// Mirrors of the ngtcp2 0.12 C structs (x86-64/arm64 LP64). Names follow the C headers on purpose:
// the struct-layout test matches them by name against offsetof() from a compiled C program.
#pragma warning disable IDE1006, CA1707, CA1051
using System.Runtime.InteropServices;

namespace Ferry.Quic.Interop;

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ngtcp2_cid
{
    public nuint datalen;
    public fixed byte data[20];
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ngtcp2_vec
{
    public byte* @base;
    public nuint len;
}

// C declares it __attribute__((aligned(8))), so it is 8 bytes although it holds one uint32_t.
[StructLayout(LayoutKind.Sequential, Size = 8)]
internal struct ngtcp2_pkt_info
{
    public uint ecn;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct sockaddr_in
{
    public ushort sin_family;
    public ushort sin_port;
    public uint sin_addr;
    public fixed byte sin_zero[8];
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct sockaddr_in6
{
    public ushort sin6_family;
    public ushort sin6_port;
    public uint sin6_flowinfo;
    public fixed byte sin6_addr[16];
    public uint sin6_scope_id;
}

[StructLayout(LayoutKind.Explicit, Size = 28)]
internal struct ngtcp2_sockaddr_union
{
    [FieldOffset(0)] public sockaddr_in @in;
    [FieldOffset(0)] public sockaddr_in6 in6;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ngtcp2_addr
{
    public void* addr;
    public uint addrlen;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ngtcp2_path
{
    public ngtcp2_addr local;
    public ngtcp2_addr remote;
    public void* user_data;
}

[StructLayout(LayoutKind.Sequential)]
internal struct ngtcp2_path_storage
{
    public ngtcp2_path path;
    public ngtcp2_sockaddr_union local_addrbuf;
    public ngtcp2_sockaddr_union remote_addrbuf;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ngtcp2_preferred_addr
{
    public ngtcp2_cid cid;
    public sockaddr_in ipv4;
    public sockaddr_in6 ipv6;
    public byte ipv4_present;
    public byte ipv6_present;
    public fixed byte stateless_reset_token[16];
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ngtcp2_version_info
{
    public uint chosen_version;
    public byte* other_versions;
    public nuint other_versionslen;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ngtcp2_transport_params
{
    public ngtcp2_preferred_addr preferred_address;
    public ngtcp2_cid original_dcid;
    public ngtcp2_cid initial_scid;
    public ngtcp2_cid retry_scid;
    public ulong initial_max_stream_data_bidi_local;
    public ulong initial_max_stream_data_bidi_remote;
    public ulong initial_max_stream_data_uni;
    public ulong initial_max_data;
    public ulong initial_max_streams_bidi;
    public ulong initial_max_streams_uni;
    public ulong max_idle_timeout;
    public ulong max_udp_payload_size;
    public ulong active_connection_id_limit;
    public ulong ack_delay_exponent;
    public ulong max_ack_delay;
    public ulong max_datagram_frame_size;
    public byte stateless_reset_token_present;
    public byte disable_active_migration;
    public byte retry_scid_present;
    public byte preferred_address_present;
    public fixed byte stateless_reset_token[16];
    public byte grease_quic_bit;
    public ngtcp2_version_info version_info;
    public byte version_info_present;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ngtcp2_qlog_settings
{
    public ngtcp2_cid odcid;
    public void* write;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ngtcp2_rand_ctx
{
    public void* native_handle;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ngtcp2_settings
{
    public ngtcp2_qlog_settings qlog;
    public int cc_algo;
    public ulong initial_ts;
    public ulong initial_rtt;
    public void* log_printf;
    public nuint max_tx_udp_payload_size;
    public ngtcp2_vec token;
    public ngtcp2_rand_ctx rand_ctx;
    public ulong max_window;
    public ulong max_stream_window;
    public nuint ack_thresh;
    public int no_tx_udp_payload_size_shaping;
    public ulong handshake_timeout;
    public uint* preferred_versions;
    public nuint preferred_versionslen;
    public uint* other_versions;
    public nuint other_versionslen;
    public uint original_version;
    public int no_pmtud;
}

[StructLayout(LayoutKind.Sequential)]
internal struct ngtcp2_pkt_hd
{
    public ngtcp2_cid dcid;
    public ngtcp2_cid scid;
    public long pkt_num;
    public ngtcp2_vec token;
    public nuint pkt_numlen;
    public nuint len;
    public uint version;
    public byte type;
    public byte flags;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ngtcp2_version_cid
{
    public uint version;
    public byte* dcid;
    public nuint dcidlen;
    public byte* scid;
    public nuint scidlen;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ngtcp2_connection_close_error
{
    public int type;
    public ulong error_code;
    public ulong frame_type;
    public byte* reason;
    public nuint reasonlen;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ngtcp2_info
{
    public int age;
    public int version_num;
    public byte* version_str;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ngtcp2_conn_stat
{
    public ulong latest_rtt;
    public ulong min_rtt;
    public ulong smoothed_rtt;
    public ulong rttvar;
    public ulong initial_rtt;
    public ulong first_rtt_sample_ts;
    public nuint pto_count;
    public ulong loss_detection_timer;
    public fixed ulong last_tx_pkt_ts[3];
    public fixed ulong loss_time[3];
    public ulong cwnd;
    public ulong ssthresh;
    public ulong congestion_recovery_start_ts;
    public ulong bytes_in_flight;
    public nuint max_tx_udp_payload_size;
    public ulong delivery_rate_sec;
    public double pacing_rate;
    public nuint send_quantum;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ngtcp2_crypto_conn_ref
{
    public void* get_conn;
    public void* user_data;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct gnutls_datum_t
{
    public byte* data;
    public uint size;
}

/// <summary>Every member is a C function pointer; unused ones stay null.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ngtcp2_callbacks
{
    public void* client_initial;
    public void* recv_client_initial;
    public void* recv_crypto_data;
    public void* handshake_completed;
    public void* recv_version_negotiation;
    public void* encrypt;
    public void* decrypt;
    public void* hp_mask;
    public void* recv_stream_data;
    public void* acked_stream_data_offset;
    public void* stream_open;
    public void* stream_close;
    public void* recv_stateless_reset;
    public void* recv_retry;
    public void* extend_max_local_streams_bidi;
    public void* extend_max_local_streams_uni;
    public void* rand;
    public void* get_new_connection_id;
    public void* remove_connection_id;
    public void* update_key;
    public void* path_validation;
    public void* select_preferred_addr;
    public void* stream_reset;
    public void* extend_max_remote_streams_bidi;
    public void* extend_max_remote_streams_uni;
    public void* extend_max_stream_data;
    public void* dcid_status;
    public void* handshake_confirmed;
    public void* recv_new_token;
    public void* delete_crypto_aead_ctx;
    public void* delete_crypto_cipher_ctx;
    public void* recv_datagram;
    public void* ack_datagram;
    public void* lost_datagram;
    public void* get_path_challenge_data;
    public void* stream_stop_sending;
    public void* version_negotiation;
    public void* recv_rx_key;
    public void* recv_tx_key;
    public void* early_data_rejected;
}
