using System.Net;
using Ferry.Core.Model;

namespace Ferry.UnitTests.Model;

public sealed class ResourceAddressTests
{
    [Theory]
    [InlineData("db.corp.internal", ResourceAddressKind.DnsName, "db.corp.internal")]
    [InlineData("DB.Corp.Internal.", ResourceAddressKind.DnsName, "db.corp.internal")]
    [InlineData("*.corp.internal", ResourceAddressKind.Wildcard, "*.corp.internal")]
    [InlineData("10.1.2.3", ResourceAddressKind.Ip, "10.1.2.3")]
    [InlineData("fd00::1", ResourceAddressKind.Ip, "fd00::1")]
    [InlineData("10.1.2.3/24", ResourceAddressKind.Cidr, "10.1.2.0/24")]
    [InlineData("fd00:1:2::5/48", ResourceAddressKind.Cidr, "fd00:1:2::/48")]
    [InlineData("0.0.0.0/0", ResourceAddressKind.Cidr, "0.0.0.0/0")]
    public void Parses_and_normalises(string text, ResourceAddressKind kind, string canonical)
    {
        Assert.True(ResourceAddress.TryParse(text, out var address, out var error), error);
        Assert.Equal(kind, address.Kind);
        Assert.Equal(canonical, address.Canonical);
    }

    [Theory]
    [InlineData("", "empty")]
    [InlineData("10.0.0.0/33", "prefix length must be a number from 0 to 32")]
    [InlineData("10.0.0.0/-1", "prefix length")]
    [InlineData("fd00::/129", "from 0 to 128")]
    [InlineData("10.0.0/8", "is not an IP address")]
    [InlineData("300.1.1.1", "looks like an IPv4 address")]
    [InlineData("a..b", "1 to 63 characters")]
    [InlineData("-a.b", "may not start or end with '-'")]
    [InlineData("db.*.internal", "wildcard may only stand first")]
    [InlineData("has space.internal", "not allowed in a DNS name")]
    public void Refuses_malformed_addresses_with_the_reason(string text, string reason)
    {
        Assert.False(ResourceAddress.TryParse(text, out _, out var error));
        Assert.Contains(reason, error, StringComparison.Ordinal);
    }

    [Fact]
    public void Wildcard_covers_subdomains_but_not_the_apex()
    {
        Assert.True(ResourceAddress.TryParse("*.corp.internal", out var wildcard, out _));
        Assert.True(wildcard.Matches("a.corp.internal"));
        Assert.True(wildcard.Matches("A.B.Corp.Internal."));
        Assert.False(wildcard.Matches("corp.internal"));
        Assert.False(wildcard.Matches("evilcorp.internal"));
        Assert.False(wildcard.Matches("10.0.0.1"));
    }

    [Fact]
    public void Cidr_matches_its_addresses_only_and_mapped_ipv4_counts()
    {
        Assert.True(ResourceAddress.TryParse("10.1.0.0/16", out var cidr, out _));
        Assert.True(cidr.Matches(IPAddress.Parse("10.1.255.7")));
        Assert.True(cidr.Matches(IPAddress.Parse("::ffff:10.1.0.9")));
        Assert.False(cidr.Matches(IPAddress.Parse("10.2.0.1")));
        Assert.False(cidr.Matches(IPAddress.Parse("fd00::1")));
        Assert.False(cidr.Matches("db.corp.internal"));
    }

    [Fact]
    public void More_specific_addresses_rank_higher()
    {
        static int Rank(string text) => ResourceAddress.TryParse(text, out var a, out _) ? a.Specificity : throw new InvalidOperationException();
        Assert.True(Rank("db.corp.internal") > Rank("*.corp.internal"));
        Assert.True(Rank("*.db.corp.internal") > Rank("*.corp.internal"));
        Assert.True(Rank("10.0.0.1") > Rank("10.0.0.0/24"));
        Assert.True(Rank("10.0.0.0/24") > Rank("10.0.0.0/8"));
    }
}
