#pragma warning disable IDE1006, CA1707
using System.Runtime.InteropServices;

namespace Ferry.Quic.Interop;

/// <summary>Constants copied from ngtcp2.h 0.12.</summary>
internal static class Ngtcp2Const
{
    public const uint NGTCP2_PROTO_VER_V1 = 1;
    public const int NGTCP2_CALLBACKS_VERSION = 1;
    public const int NGTCP2_SETTINGS_VERSION = 1;
    public const int NGTCP2_TRANSPORT_PARAMS_VERSION = 1;
    public const int NGTCP2_PKT_INFO_VERSION = 1;
    public const int NGTCP2_CONN_STAT_VERSION = 1;
    public const int NGTCP2_VERSION_AGE = 1;
    public const int NGTCP2_MAX_CIDLEN = 20;
    public const int NGTCP2_MIN_INITIAL_DCIDLEN = 8;
    public const int NGTCP2_STATELESS_RESET_TOKENLEN = 16;
    public const int NGTCP2_MAX_UDP_PAYLOAD_SIZE = 1200;
    public const int NGTCP2_MIN_STATELESS_RESET_RANDLEN = 5;
    public const int NGTCP2_CRYPTO_MAX_RETRY_TOKENLEN = 1 + 1 + 20 + 8 + 16 + 32;
    public const byte NGTCP2_CRYPTO_TOKEN_MAGIC_RETRY = 0xb6;
    public const byte NGTCP2_PKT_INITIAL = 0x10;
    public const ulong NGTCP2_MILLISECONDS = 1_000_000;
    public const ulong NGTCP2_SECONDS = 1_000_000_000;

    public const int NGTCP2_ERR_INVALID_ARGUMENT = -201;
    public const int NGTCP2_ERR_NOBUF = -203;
    public const int NGTCP2_ERR_STREAM_ID_BLOCKED = -208;
    public const int NGTCP2_ERR_INVALID_STATE = -206;
    public const int NGTCP2_ERR_STREAM_IN_USE = -209;
    public const int NGTCP2_ERR_STREAM_DATA_BLOCKED = -210;
    public const int NGTCP2_ERR_CRYPTO = -215;
    public const int NGTCP2_ERR_STREAM_SHUT_WR = -221;
    public const int NGTCP2_ERR_STREAM_NOT_FOUND = -222;
    public const int NGTCP2_ERR_CLOSING = -230;
    public const int NGTCP2_ERR_DRAINING = -231;
    public const int NGTCP2_ERR_DISCARD_PKT = -235;
    public const int NGTCP2_ERR_WRITE_MORE = -240;
    public const int NGTCP2_ERR_RETRY = -241;
    public const int NGTCP2_ERR_DROP_CONN = -242;
    public const int NGTCP2_ERR_VERSION_NEGOTIATION = -245;
    public const int NGTCP2_ERR_HANDSHAKE_TIMEOUT = -246;
    public const int NGTCP2_ERR_IDLE_CLOSE = -248;
    public const int NGTCP2_ERR_CALLBACK_FAILURE = -502;

    public const uint NGTCP2_STREAM_DATA_FLAG_FIN = 0x01;
    public const uint NGTCP2_STREAM_CLOSE_FLAG_APP_ERROR_CODE_SET = 0x01;
    public const uint NGTCP2_WRITE_STREAM_FLAG_NONE = 0x00;
    public const uint NGTCP2_WRITE_STREAM_FLAG_MORE = 0x01;
    public const uint NGTCP2_WRITE_STREAM_FLAG_FIN = 0x02;
    public const uint NGTCP2_WRITE_DATAGRAM_FLAG_NONE = 0x00;
    public const uint NGTCP2_WRITE_DATAGRAM_FLAG_MORE = 0x01;

    public const int NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_TRANSPORT = 0;
    public const int NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_APPLICATION = 1;
    public const int NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_TRANSPORT_VERSION_NEGOTIATION = 2;
    public const int NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_TRANSPORT_IDLE_CLOSE = 3;

    public const ulong NGTCP2_CRYPTO_ERROR = 0x100;
    public const int NGTCP2_CC_ALGO_RENO = 0;
    public const int NGTCP2_CC_ALGO_CUBIC = 1;
    public const int NGTCP2_CC_ALGO_BBR = 2;
    public const int NGTCP2_CC_ALGO_BBR2 = 3;
}

/// <summary>LibraryImport declarations of libngtcp2.so.9; names resolve through <see cref="QuicSupport"/>.</summary>
internal static unsafe partial class Ngtcp2
{
    internal const string Lib = "ngtcp2";

    static Ngtcp2() => QuicSupport.ThrowIfNotSupported();

    [LibraryImport(Lib)] internal static partial ngtcp2_info* ngtcp2_version(int least_version);
    [LibraryImport(Lib)] internal static partial void ngtcp2_settings_default_versioned(int settings_version, ngtcp2_settings* settings);
    [LibraryImport(Lib)] internal static partial void ngtcp2_transport_params_default_versioned(int transport_params_version, ngtcp2_transport_params* @params);

    [LibraryImport(Lib)]
    internal static partial int ngtcp2_conn_client_new_versioned(
        nint* pconn, ngtcp2_cid* dcid, ngtcp2_cid* scid, ngtcp2_path* path, uint client_chosen_version,
        int callbacks_version, ngtcp2_callbacks* callbacks, int settings_version, ngtcp2_settings* settings,
        int transport_params_version, ngtcp2_transport_params* @params, void* mem, void* user_data);

    [LibraryImport(Lib)]
    internal static partial int ngtcp2_conn_server_new_versioned(
        nint* pconn, ngtcp2_cid* dcid, ngtcp2_cid* scid, ngtcp2_path* path, uint client_chosen_version,
        int callbacks_version, ngtcp2_callbacks* callbacks, int settings_version, ngtcp2_settings* settings,
        int transport_params_version, ngtcp2_transport_params* @params, void* mem, void* user_data);

    [LibraryImport(Lib)] internal static partial void ngtcp2_conn_del(nint conn);

    [LibraryImport(Lib)]
    internal static partial int ngtcp2_conn_read_pkt_versioned(
        nint conn, ngtcp2_path* path, int pkt_info_version, ngtcp2_pkt_info* pi, byte* pkt, nuint pktlen, ulong ts);

    [LibraryImport(Lib)]
    internal static partial nint ngtcp2_conn_write_pkt_versioned(
        nint conn, ngtcp2_path* path, int pkt_info_version, ngtcp2_pkt_info* pi, byte* dest, nuint destlen, ulong ts);

    [LibraryImport(Lib)]
    internal static partial nint ngtcp2_conn_writev_stream_versioned(
        nint conn, ngtcp2_path* path, int pkt_info_version, ngtcp2_pkt_info* pi, byte* dest, nuint destlen,
        nint* pdatalen, uint flags, long stream_id, ngtcp2_vec* datav, nuint datavcnt, ulong ts);

    [LibraryImport(Lib)]
    internal static partial nint ngtcp2_conn_writev_datagram_versioned(
        nint conn, ngtcp2_path* path, int pkt_info_version, ngtcp2_pkt_info* pi, byte* dest, nuint destlen,
        int* paccepted, uint flags, ulong dgram_id, ngtcp2_vec* datav, nuint datavcnt, ulong ts);

    [LibraryImport(Lib)]
    internal static partial nint ngtcp2_conn_write_connection_close_versioned(
        nint conn, ngtcp2_path* path, int pkt_info_version, ngtcp2_pkt_info* pi, byte* dest, nuint destlen,
        ngtcp2_connection_close_error* ccerr, ulong ts);

    [LibraryImport(Lib)] internal static partial nint ngtcp2_pkt_write_stateless_reset(byte* dest, nuint destlen, byte* stateless_reset_token, byte* rand, nuint randlen);
    [LibraryImport(Lib)] internal static partial nint ngtcp2_pkt_write_version_negotiation(byte* dest, nuint destlen, byte unused_random, byte* dcid, nuint dcidlen, byte* scid, nuint scidlen, uint* sv, nuint nsv);
    [LibraryImport(Lib)] internal static partial int ngtcp2_accept(ngtcp2_pkt_hd* dest, byte* pkt, nuint pktlen);
    [LibraryImport(Lib)] internal static partial int ngtcp2_pkt_decode_version_cid(ngtcp2_version_cid* dest, byte* data, nuint datalen, nuint short_dcidlen);

    [LibraryImport(Lib)] internal static partial ulong ngtcp2_conn_get_expiry(nint conn);
    [LibraryImport(Lib)] internal static partial ulong ngtcp2_conn_get_pto(nint conn);
    [LibraryImport(Lib)] internal static partial void ngtcp2_conn_get_conn_stat_versioned(nint conn, int conn_stat_version, ngtcp2_conn_stat* cstat);
    [LibraryImport(Lib)] internal static partial ngtcp2_transport_params* ngtcp2_conn_get_remote_transport_params(nint conn);
    [LibraryImport(Lib)] internal static partial int ngtcp2_conn_handle_expiry(nint conn, ulong ts);
    [LibraryImport(Lib)] internal static partial void ngtcp2_conn_update_pkt_tx_time(nint conn, ulong ts);
    [LibraryImport(Lib)] internal static partial int ngtcp2_conn_get_handshake_completed(nint conn);
    [LibraryImport(Lib)] internal static partial void ngtcp2_conn_set_tls_native_handle(nint conn, nint tls_native_handle);
    [LibraryImport(Lib)] internal static partial void ngtcp2_conn_set_keep_alive_timeout(nint conn, ulong timeout);
    [LibraryImport(Lib)] internal static partial byte ngtcp2_conn_get_tls_alert(nint conn);
    [LibraryImport(Lib)] internal static partial int ngtcp2_conn_get_tls_error(nint conn);
    [LibraryImport(Lib)] internal static partial nuint ngtcp2_conn_get_path_max_tx_udp_payload_size(nint conn);
    [LibraryImport(Lib)] internal static partial int ngtcp2_conn_initiate_immediate_migration(nint conn, ngtcp2_path* path, ulong ts);
    [LibraryImport(Lib)] internal static partial int ngtcp2_conn_initiate_migration(nint conn, ngtcp2_path* path, ulong ts);
    [LibraryImport(Lib)] internal static partial ngtcp2_path* ngtcp2_conn_get_path(nint conn);
    [LibraryImport(Lib)] internal static partial int ngtcp2_conn_is_in_closing_period(nint conn);
    [LibraryImport(Lib)] internal static partial int ngtcp2_conn_is_in_draining_period(nint conn);
    [LibraryImport(Lib)] internal static partial nuint ngtcp2_conn_get_max_tx_udp_payload_size(nint conn);
    [LibraryImport(Lib)] internal static partial int ngtcp2_conn_is_local_stream(nint conn, long stream_id);

    [LibraryImport(Lib)] internal static partial int ngtcp2_conn_open_bidi_stream(nint conn, long* pstream_id, void* stream_user_data);
    [LibraryImport(Lib)] internal static partial int ngtcp2_conn_open_uni_stream(nint conn, long* pstream_id, void* stream_user_data);
    [LibraryImport(Lib)] internal static partial int ngtcp2_conn_shutdown_stream_write(nint conn, long stream_id, ulong app_error_code);
    [LibraryImport(Lib)] internal static partial int ngtcp2_conn_shutdown_stream_read(nint conn, long stream_id, ulong app_error_code);
    [LibraryImport(Lib)] internal static partial int ngtcp2_conn_extend_max_stream_offset(nint conn, long stream_id, ulong datalen);
    [LibraryImport(Lib)] internal static partial void ngtcp2_conn_extend_max_offset(nint conn, ulong datalen);
    [LibraryImport(Lib)] internal static partial void ngtcp2_conn_extend_max_streams_bidi(nint conn, nuint n);
    [LibraryImport(Lib)] internal static partial void ngtcp2_conn_extend_max_streams_uni(nint conn, nuint n);
    [LibraryImport(Lib)] internal static partial ulong ngtcp2_conn_get_streams_bidi_left(nint conn);

    [LibraryImport(Lib)] internal static partial void ngtcp2_conn_get_connection_close_error(nint conn, ngtcp2_connection_close_error* ccerr);
    [LibraryImport(Lib)] internal static partial void ngtcp2_connection_close_error_default(ngtcp2_connection_close_error* ccerr);
    [LibraryImport(Lib)] internal static partial void ngtcp2_connection_close_error_set_application_error(ngtcp2_connection_close_error* ccerr, ulong error_code, byte* reason, nuint reasonlen);
    [LibraryImport(Lib)] internal static partial void ngtcp2_connection_close_error_set_transport_error_liberr(ngtcp2_connection_close_error* ccerr, int liberr, byte* reason, nuint reasonlen);
    [LibraryImport(Lib)] internal static partial void ngtcp2_connection_close_error_set_transport_error_tls_alert(ngtcp2_connection_close_error* ccerr, byte tls_alert, byte* reason, nuint reasonlen);

    [LibraryImport(Lib)] internal static partial byte* ngtcp2_strerror(int liberr);
    [LibraryImport(Lib)] internal static partial int ngtcp2_err_is_fatal(int liberr);
    [LibraryImport(Lib)] internal static partial int ngtcp2_is_bidi_stream(long stream_id);

    internal static string StrError(int liberr) => Marshal.PtrToStringUTF8((nint)ngtcp2_strerror(liberr)) ?? liberr.ToString(System.Globalization.CultureInfo.InvariantCulture);
}

/// <summary>libngtcp2_crypto_gnutls.so.2: session setup plus the exported callbacks, taken as raw function pointers.</summary>
internal static unsafe partial class Ngtcp2Crypto
{
    internal const string Lib = "ngtcp2_crypto_gnutls";

    static Ngtcp2Crypto() => QuicSupport.ThrowIfNotSupported();

    [LibraryImport(Lib)] internal static partial int ngtcp2_crypto_gnutls_configure_client_session(nint session);
    [LibraryImport(Lib)] internal static partial int ngtcp2_crypto_gnutls_configure_server_session(nint session);
    [LibraryImport(Lib)]
    internal static partial nint ngtcp2_crypto_generate_retry_token(byte* token, byte* secret, nuint secretlen, uint version,
        void* remote_addr, uint remote_addrlen, ngtcp2_cid* retry_scid, ngtcp2_cid* odcid, ulong ts);

    [LibraryImport(Lib)]
    internal static partial int ngtcp2_crypto_verify_retry_token(ngtcp2_cid* odcid, byte* token, nuint tokenlen, byte* secret, nuint secretlen,
        uint version, void* remote_addr, uint remote_addrlen, ngtcp2_cid* dcid, ulong timeout, ulong ts);

    [LibraryImport(Lib)]
    internal static partial nint ngtcp2_crypto_write_retry(byte* dest, nuint destlen, uint version, ngtcp2_cid* dcid, ngtcp2_cid* scid,
        ngtcp2_cid* odcid, byte* token, nuint tokenlen);

    [LibraryImport(Lib)] internal static partial int ngtcp2_crypto_generate_stateless_reset_token(byte* token, byte* secret, nuint secretlen, ngtcp2_cid* cid);

    internal static readonly void* client_initial_cb = Export("ngtcp2_crypto_client_initial_cb");
    internal static readonly void* recv_client_initial_cb = Export("ngtcp2_crypto_recv_client_initial_cb");
    internal static readonly void* recv_crypto_data_cb = Export("ngtcp2_crypto_recv_crypto_data_cb");
    internal static readonly void* encrypt_cb = Export("ngtcp2_crypto_encrypt_cb");
    internal static readonly void* decrypt_cb = Export("ngtcp2_crypto_decrypt_cb");
    internal static readonly void* hp_mask_cb = Export("ngtcp2_crypto_hp_mask_cb");
    internal static readonly void* recv_retry_cb = Export("ngtcp2_crypto_recv_retry_cb");
    internal static readonly void* update_key_cb = Export("ngtcp2_crypto_update_key_cb");
    internal static readonly void* delete_crypto_aead_ctx_cb = Export("ngtcp2_crypto_delete_crypto_aead_ctx_cb");
    internal static readonly void* delete_crypto_cipher_ctx_cb = Export("ngtcp2_crypto_delete_crypto_cipher_ctx_cb");
    internal static readonly void* get_path_challenge_data_cb = Export("ngtcp2_crypto_get_path_challenge_data_cb");
    internal static readonly void* version_negotiation_cb = Export("ngtcp2_crypto_version_negotiation_cb");

    private static void* Export(string name) => (void*)NativeLibrary.GetExport(QuicSupport.CryptoHandle, name);
}

/// <summary>The few GnuTLS 3.7 functions Ferry needs (libgnutls.so.30).</summary>
internal static unsafe partial class GnuTls
{
    internal const string Lib = "gnutls";

    public const uint GNUTLS_SERVER = 1;
    public const uint GNUTLS_CLIENT = 1 << 1;
    public const uint GNUTLS_ENABLE_EARLY_DATA = 1 << 20;
    public const uint GNUTLS_NO_AUTO_SEND_TICKET = 1 << 21;
    public const uint GNUTLS_NO_END_OF_EARLY_DATA = 1 << 22;
    public const int GNUTLS_CRD_CERTIFICATE = 1;
    public const int GNUTLS_X509_FMT_DER = 0;
    public const int GNUTLS_X509_FMT_PEM = 1;
    public const int GNUTLS_CERT_REQUIRE = 2;
    public const int GNUTLS_ALPN_MANDATORY = 1;
    public const int GNUTLS_NAME_DNS = 1;

    static GnuTls() => QuicSupport.ThrowIfNotSupported();

    [LibraryImport(Lib)] internal static partial int gnutls_init(nint* session, uint flags);
    [LibraryImport(Lib)] internal static partial void gnutls_deinit(nint session);
    [LibraryImport(Lib)] internal static partial int gnutls_priority_set_direct(nint session, byte* priorities, byte** err_pos);
    [LibraryImport(Lib)] internal static partial int gnutls_credentials_set(nint session, int type, nint cred);
    [LibraryImport(Lib)] internal static partial int gnutls_certificate_allocate_credentials(nint* res);
    [LibraryImport(Lib)] internal static partial void gnutls_certificate_free_credentials(nint sc);
    [LibraryImport(Lib)] internal static partial int gnutls_certificate_set_x509_key_mem(nint res, gnutls_datum_t* cert, gnutls_datum_t* key, int type);
    [LibraryImport(Lib)] internal static partial int gnutls_certificate_set_x509_trust_mem(nint res, gnutls_datum_t* ca, int type);
    [LibraryImport(Lib)] internal static partial void gnutls_certificate_server_set_request(nint session, int req);
    [LibraryImport(Lib)] internal static partial void gnutls_session_set_verify_cert(nint session, byte* hostname, uint flags);
    [LibraryImport(Lib)] internal static partial uint gnutls_session_get_verify_cert_status(nint session);
    [LibraryImport(Lib)] internal static partial gnutls_datum_t* gnutls_certificate_get_peers(nint session, uint* list_size);
    [LibraryImport(Lib)] internal static partial int gnutls_alpn_set_protocols(nint session, gnutls_datum_t* protocols, uint protocols_size, uint flags);
    [LibraryImport(Lib)] internal static partial int gnutls_alpn_get_selected_protocol(nint session, gnutls_datum_t* protocol);
    [LibraryImport(Lib)] internal static partial int gnutls_server_name_set(nint session, int type, byte* name, nuint name_length);
    [LibraryImport(Lib)] internal static partial void gnutls_session_set_ptr(nint session, void* ptr);
    [LibraryImport(Lib)] internal static partial byte* gnutls_strerror(int error);
    [LibraryImport(Lib)] internal static partial byte* gnutls_alert_get_name(int alert);

    internal static string StrError(int error) => Marshal.PtrToStringUTF8((nint)gnutls_strerror(error)) ?? error.ToString(System.Globalization.CultureInfo.InvariantCulture);

    internal static string AlertName(int alert) => Marshal.PtrToStringUTF8((nint)gnutls_alert_get_name(alert)) ?? "alert " + alert.ToString(System.Globalization.CultureInfo.InvariantCulture);
}
