// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Test} from "./utils/Test.sol";
import {DatanetRegistry} from "../src/DatanetRegistry.sol";
import {AdapterRegistry} from "../src/AdapterRegistry.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";
import {OpenLoRAToken} from "../src/OpenLoRAToken.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

contract DatanetRegistryTest is Test {
    DatanetRegistry reg;
    address curator = address(0xC0);
    address alice = address(0xA1);
    address bob = address(0xB0);

    function setUp() public {
        reg = new DatanetRegistry();
    }

    function _datanet() internal returns (uint256 id) {
        vm.prank(curator);
        id = reg.createDatanet("bafymeta");
    }

    function test_createDatanet() public {
        vm.expectEmit();
        emit DatanetRegistry.DatanetCreated(1, curator, "bafymeta");
        uint256 id = _datanet();
        assertEq(id, 1, "first id");
        DatanetRegistry.Datanet memory d = reg.getDatanet(id);
        assertEq(d.curator, curator, "curator");
        assertEq(d.metadataCid, "bafymeta", "metadata");
        assertEq(reg.datanetCount(), 1, "count");
        assertTrue(reg.exists(1) && !reg.exists(2), "exists");
    }

    function test_createDatanet_revertsOnEmptyCid() public {
        vm.expectRevert(DatanetRegistry.EmptyCid.selector);
        reg.createDatanet("");
    }

    function test_contributeAcceptReject() public {
        uint256 id = _datanet();
        vm.prank(alice);
        vm.expectEmit();
        emit DatanetRegistry.ContributionSubmitted(id, 1, alice, "bafydata1", 100);
        uint256 c1 = reg.contribute(id, "bafydata1", 100);
        vm.prank(bob);
        uint256 c2 = reg.contribute(id, "bafydata2", 50);
        assertEq(c2, 2, "second contribution id");
        assertEq(reg.weightOf(id, c1), 0, "pending weight");
        vm.prank(curator);
        vm.expectEmit();
        emit DatanetRegistry.ContributionAccepted(id, c1, 100);
        reg.accept(id, c1);
        vm.prank(curator);
        vm.expectEmit();
        emit DatanetRegistry.ContributionRejected(id, c2);
        reg.reject(id, c2);
        assertEq(reg.weightOf(id, c1), 100, "accepted weight");
        assertEq(reg.weightOf(id, c2), 0, "rejected weight");
        DatanetRegistry.Contribution memory c = reg.getContribution(id, c1);
        assertEq(c.contributor, alice, "contributor");
        assertEq(c.dataCid, "bafydata1", "data cid");
        assertTrue(c.status == DatanetRegistry.Status.Accepted, "status");
        assertEq(reg.getDatanet(id).totalAcceptedWeight, 100, "total weight");
        assertEq(reg.getDatanet(id).contributionCount, 2, "contribution count");
    }

    function test_contribute_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.UnknownDatanet.selector, 7));
        reg.contribute(7, "x", 1);
        uint256 id = _datanet();
        vm.expectRevert(DatanetRegistry.EmptyCid.selector);
        reg.contribute(id, "", 1);
        vm.expectRevert(DatanetRegistry.ZeroSize.selector);
        reg.contribute(id, "x", 0);
    }

    function test_review_reverts() public {
        uint256 id = _datanet();
        vm.prank(alice);
        uint256 c = reg.contribute(id, "x", 5);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotCurator.selector, id, alice));
        reg.accept(id, c);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotCurator.selector, id, alice));
        reg.reject(id, c);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.UnknownDatanet.selector, 9));
        reg.accept(9, c);
        vm.startPrank(curator);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.UnknownContribution.selector, id, 5));
        reg.accept(id, 5);
        reg.accept(id, c);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.AlreadyReviewed.selector, id, c));
        reg.accept(id, c);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.AlreadyReviewed.selector, id, c));
        reg.reject(id, c);
        vm.stopPrank();
    }

    function test_views_revertOnUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.UnknownDatanet.selector, 1));
        reg.getDatanet(1);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.UnknownContribution.selector, 1, 1));
        reg.getContribution(1, 1);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.UnknownContribution.selector, 1, 1));
        reg.weightOf(1, 1);
    }

    function test_setCurator() public {
        uint256 id = _datanet();
        vm.prank(curator);
        vm.expectRevert(DatanetRegistry.ZeroAddress.selector);
        reg.setCurator(id, address(0));
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotCurator.selector, id, alice));
        reg.setCurator(id, alice);
        vm.prank(curator);
        vm.expectEmit();
        emit DatanetRegistry.CuratorChanged(id, curator, bob);
        reg.setCurator(id, bob);
        assertEq(reg.getDatanet(id).curator, bob, "new curator");
    }
}

contract DatanetVersionTest is Test {
    DatanetRegistry reg;
    address curator = address(0xC0);
    address alice = address(0xA1);
    uint256 id;

    function setUp() public {
        reg = new DatanetRegistry();
        vm.prank(curator);
        id = reg.createDatanet("bafymeta");
        vm.startPrank(alice);
        for (uint256 i; i < 4; ++i) {
            reg.contribute(id, "bafydata", 10);
        }
        vm.stopPrank();
        vm.startPrank(curator);
        reg.accept(id, 1);
        reg.accept(id, 2);
        reg.reject(id, 3); // 4 stays pending
        vm.stopPrank();
    }

    function _ids(uint256 a, uint256 b) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](2);
        ids[0] = a;
        ids[1] = b;
    }

    function test_publishVersion() public {
        assertEq(reg.versionCount(id), 0, "no version yet");
        vm.prank(curator);
        vm.expectEmit();
        emit DatanetRegistry.VersionPublished(id, 1, "bafyv1", 30, _ids(1, 2), _ids(12, 18));
        reg.publishVersion(id, 1, "bafyv1", 30, _ids(1, 2), _ids(12, 18));
        vm.prank(curator);
        reg.publishVersion(id, 2, "bafyv2", 7, _ids(1, 2), _ids(7, 0)); // a fully duplicate contribution weighs 0
        assertEq(reg.versionCount(id), 2, "two versions");
        DatanetRegistry.Version memory v = reg.getVersion(id, 1);
        assertEq(v.manifestCid, "bafyv1", "manifest");
        assertEq(v.totalWeight, 30, "total");
        assertEq(v.contributionIds[1], 2, "ids");
        assertEq(v.weights[1], 18, "weights");
        assertEq(reg.getVersion(id, 2).totalWeight, 7, "latest");
        assertEq(reg.weightOf(id, 1), 10, "declared size untouched");
    }

    function test_publishVersion_onlyCurator() public {
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotCurator.selector, id, alice));
        reg.publishVersion(id, 1, "bafyv1", 30, _ids(1, 2), _ids(12, 18));
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.UnknownDatanet.selector, 9));
        reg.publishVersion(9, 1, "bafyv1", 30, _ids(1, 2), _ids(12, 18));
    }

    function test_publishVersion_monotonicNumbers() public {
        vm.startPrank(curator);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.VersionOutOfOrder.selector, id, 1, 2));
        reg.publishVersion(id, 2, "bafyv", 30, _ids(1, 2), _ids(12, 18));
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.VersionOutOfOrder.selector, id, 1, 0));
        reg.publishVersion(id, 0, "bafyv", 30, _ids(1, 2), _ids(12, 18));
        reg.publishVersion(id, 1, "bafyv", 30, _ids(1, 2), _ids(12, 18));
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.VersionOutOfOrder.selector, id, 2, 1));
        reg.publishVersion(id, 1, "bafyv", 30, _ids(1, 2), _ids(12, 18)); // a replayed publish
        vm.stopPrank();
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.UnknownVersion.selector, id, 2));
        reg.getVersion(id, 2);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.UnknownVersion.selector, id, 0));
        reg.getVersion(id, 0);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.UnknownDatanet.selector, 5));
        reg.versionCount(5);
    }

    function test_publishVersion_reverts() public {
        vm.startPrank(curator);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.WeightsDoNotSum.selector, 30, 31));
        reg.publishVersion(id, 1, "bafyv", 31, _ids(1, 2), _ids(12, 18));
        vm.expectRevert(DatanetRegistry.EmptyCid.selector);
        reg.publishVersion(id, 1, "", 30, _ids(1, 2), _ids(12, 18));
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.LengthMismatch.selector, 2, 1));
        reg.publishVersion(id, 1, "bafyv", 30, _ids(1, 2), new uint256[](1));
        vm.expectRevert(DatanetRegistry.EmptyVersion.selector);
        reg.publishVersion(id, 1, "bafyv", 0, new uint256[](0), new uint256[](0));
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.ContributionsNotSorted.selector, 1));
        reg.publishVersion(id, 1, "bafyv", 30, _ids(2, 1), _ids(12, 18));
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.ContributionsNotSorted.selector, 1));
        reg.publishVersion(id, 1, "bafyv", 30, _ids(1, 1), _ids(12, 18));
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotAccepted.selector, id, 3)); // rejected
        reg.publishVersion(id, 1, "bafyv", 30, _ids(1, 3), _ids(12, 18));
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotAccepted.selector, id, 4)); // pending
        reg.publishVersion(id, 1, "bafyv", 30, _ids(1, 4), _ids(12, 18));
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotAccepted.selector, id, 9)); // unknown
        reg.publishVersion(id, 1, "bafyv", 30, _ids(1, 9), _ids(12, 18));
        vm.stopPrank();
    }

    /// Any weights are accepted exactly when the total is their sum; what is stored is what was given.
    function testFuzz_publishVersion_weightsSumToTotal(uint128 a, uint128 b, uint256 delta) public {
        uint256 sum = uint256(a) + uint256(b);
        delta = bound(delta, 1, type(uint128).max);
        vm.startPrank(curator);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.WeightsDoNotSum.selector, sum, sum + delta));
        reg.publishVersion(id, 1, "bafyv", sum + delta, _ids(1, 2), _ids(a, b));
        reg.publishVersion(id, 1, "bafyv", sum, _ids(1, 2), _ids(a, b));
        vm.stopPrank();
        DatanetRegistry.Version memory v = reg.getVersion(id, 1);
        assertEq(v.totalWeight, v.weights[0] + v.weights[1], "total = sum of weights");
        assertEq(v.weights[0], a, "weight a");
    }
}

/// Drives DatanetRegistry with random contributions, reviews and publishes (valid and not), for the invariants.
contract DatanetHandler is Test {
    DatanetRegistry public immutable reg;
    address public constant CURATOR = address(0xC0);
    uint256 public immutable id;
    uint256 public published;
    bool public badPublishAccepted;

    constructor(DatanetRegistry reg_) {
        reg = reg_;
        vm.prank(CURATOR);
        id = reg.createDatanet("bafymeta");
    }

    function contribute(uint64 size) external {
        vm.prank(address(0xA1));
        reg.contribute(id, "bafydata", uint64(bound(size, 1, 1e12)));
    }

    function review(uint256 which, bool ok) external {
        uint256 n = reg.getDatanet(id).contributionCount;
        if (n == 0) return;
        which = bound(which, 1, n);
        if (reg.getContribution(id, which).status != DatanetRegistry.Status.Pending) return;
        vm.prank(CURATOR);
        if (ok) reg.accept(id, which);
        else reg.reject(id, which);
    }

    /// Publish every accepted contribution with pseudo-random weights; `skew` != 0 makes the total wrong.
    function publish(uint256 seed, uint8 skew, bool asStranger) external {
        uint256 n = reg.getDatanet(id).contributionCount;
        uint256 k;
        for (uint256 i = 1; i <= n; ++i) {
            if (reg.getContribution(id, i).status == DatanetRegistry.Status.Accepted) ++k;
        }
        uint256[] memory ids = new uint256[](k);
        uint256[] memory weights = new uint256[](k);
        uint256 total;
        k = 0;
        for (uint256 i = 1; i <= n; ++i) {
            if (reg.getContribution(id, i).status != DatanetRegistry.Status.Accepted) continue;
            ids[k] = i;
            weights[k] = uint256(keccak256(abi.encode(seed, i))) % 1e9;
            total += weights[k];
            ++k;
        }
        bool valid = k > 0 && skew == 0 && !asStranger;
        vm.prank(asStranger ? address(0xBAD) : CURATOR);
        try reg.publishVersion(id, published + 1, "bafyv", total + skew, ids, weights) {
            if (!valid) badPublishAccepted = true;
            ++published;
        } catch {}
    }
}

contract DatanetInvariantTest is Test {
    DatanetRegistry reg;
    DatanetHandler handler;

    function setUp() public {
        reg = new DatanetRegistry();
        handler = new DatanetHandler(reg);
    }

    function targetContracts() public view returns (address[] memory out) {
        out = new address[](1);
        out[0] = address(handler);
    }

    function invariant_versionsAreConsistent() public view {
        uint256 id = handler.id();
        assertEq(reg.versionCount(id), handler.published(), "versions = successful publishes, numbered 1..n");
        assertFalse(handler.badPublishAccepted(), "a wrong total, an empty version or a stranger's publish");
        for (uint256 v = 1; v <= handler.published(); ++v) {
            DatanetRegistry.Version memory ver = reg.getVersion(id, v);
            uint256 sum;
            for (uint256 i; i < ver.weights.length; ++i) {
                sum += ver.weights[i];
                assertTrue(reg.getContribution(id, ver.contributionIds[i]).status == DatanetRegistry.Status.Accepted,
                    "only accepted contributions");
                assertTrue(i == 0 || ver.contributionIds[i] > ver.contributionIds[i - 1], "ids increasing");
            }
            assertEq(sum, ver.totalWeight, "weights sum to the total");
        }
    }
}

contract AdapterRegistryTest is Test {
    DatanetRegistry datanets;
    AdapterRegistry reg;
    address author = address(0xAA);
    address other = address(0xBB);

    function setUp() public {
        datanets = new DatanetRegistry();
        reg = new AdapterRegistry(datanets);
        datanets.createDatanet("m1");
        datanets.createDatanet("m2");
    }

    function _ids(uint256 a, uint256 b) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](2);
        ids[0] = a;
        ids[1] = b;
    }

    function _w(uint16 a, uint16 b) internal pure returns (uint16[] memory w) {
        w = new uint16[](2);
        w[0] = a;
        w[1] = b;
    }

    function _register() internal returns (bytes32 id) {
        vm.prank(author);
        id = reg.register("bafyadapter", "llama-tiny", 7, _ids(1, 2), _w(6000, 4000));
    }

    function test_register() public {
        bytes32 id = _register();
        assertEq(id, keccak256("bafyadapter"), "id = keccak(cid)");
        assertEq(id, reg.adapterIdOf("bafyadapter"), "adapterIdOf");
        AdapterRegistry.Adapter memory a = reg.getAdapter(id);
        assertEq(a.author, author, "author");
        assertEq(a.pricePerToken, 7, "price");
        assertEq(a.baseModel, "llama-tiny", "base");
        assertEq(a.cid, "bafyadapter", "cid");
        assertEq(a.datanetIds[1], 2, "datanet");
        assertEq(a.weightsBps[0], 6000, "weight");
        assertTrue(reg.isActive(id), "active");
        assertEq(reg.adapterCount(), 1, "count");
    }

    function test_register_reverts() public {
        vm.expectRevert(AdapterRegistry.EmptyCid.selector);
        reg.register("", "b", 1, _ids(1, 2), _w(5000, 5000));
        vm.expectRevert(AdapterRegistry.EmptyBaseModel.selector);
        reg.register("c", "", 1, _ids(1, 2), _w(5000, 5000));
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.LengthMismatch.selector, 2, 1));
        reg.register("c", "b", 1, _ids(1, 2), new uint16[](1));
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.TooManyDatanets.selector, 17));
        reg.register("c", "b", 1, new uint256[](17), new uint16[](17));
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.DatanetsNotSorted.selector, 1));
        reg.register("c", "b", 1, _ids(2, 1), _w(5000, 5000));
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownDatanet.selector, 3));
        reg.register("c", "b", 1, _ids(1, 3), _w(5000, 5000));
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.ZeroWeight.selector, 1));
        reg.register("c", "b", 1, _ids(1, 2), _w(10000, 0));
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.WeightsDoNotSum.selector, 9999));
        reg.register("c", "b", 1, _ids(1, 2), _w(5000, 4999));
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.WeightsDoNotSum.selector, 0));
        reg.register("c", "b", 1, new uint256[](0), new uint16[](0));
        bytes32 id = _register();
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.AlreadyRegistered.selector, id));
        reg.register("bafyadapter", "b", 1, _ids(1, 2), _w(5000, 5000));
    }

    function test_updatePriceAndRetire() public {
        bytes32 id = _register();
        vm.prank(other);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.NotAuthor.selector, id, other));
        reg.updatePrice(id, 9);
        vm.prank(other);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.NotAuthor.selector, id, other));
        reg.retire(id);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownAdapter.selector, bytes32(uint256(1))));
        reg.updatePrice(bytes32(uint256(1)), 9);
        vm.startPrank(author);
        vm.expectEmit();
        emit AdapterRegistry.AdapterPriceUpdated(id, 7, 9);
        reg.updatePrice(id, 9);
        assertEq(reg.getAdapter(id).pricePerToken, 9, "new price");
        vm.expectEmit();
        emit AdapterRegistry.AdapterRetired(id);
        reg.retire(id);
        assertFalse(reg.isActive(id), "retired");
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.AdapterIsRetired.selector, id));
        reg.updatePrice(id, 1);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.AdapterIsRetired.selector, id));
        reg.retire(id);
        vm.stopPrank();
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownAdapter.selector, bytes32(0)));
        reg.getAdapter(bytes32(0));
    }
}

contract NodeRegistryTest is Test {
    NodeRegistry reg;
    address op = address(0x0B);
    address node = address(0x0D);

    function setUp() public {
        reg = new NodeRegistry();
    }

    function _price() internal pure returns (NodeRegistry.PricePolicy memory) {
        return NodeRegistry.PricePolicy({pricePerToken: 3, minFee: 100});
    }

    function test_registerUpdateDeregister() public {
        vm.prank(op);
        vm.expectEmit();
        emit NodeRegistry.NodeRegistered(node, op, "12D3KooW", "http://127.0.0.1:8000", "llama", 3, 100);
        reg.register(node, "12D3KooW", "http://127.0.0.1:8000", "llama", _price());
        assertTrue(reg.isRegistered(node), "registered");
        assertEq(reg.nodeCount(), 1, "count");
        NodeRegistry.Node memory n = reg.getNode(node);
        assertEq(n.operator, op, "operator");
        assertEq(n.peerId, "12D3KooW", "peer id");
        assertEq(n.price.minFee, 100, "min fee");
        vm.prank(op);
        vm.expectEmit();
        emit NodeRegistry.NodeUpdated(node, "http://x", 4, 5);
        reg.update(node, "http://x", NodeRegistry.PricePolicy(4, 5));
        assertEq(reg.getNode(node).endpoint, "http://x", "endpoint");
        vm.prank(op);
        vm.expectEmit();
        emit NodeRegistry.NodeDeregistered(node, op);
        reg.deregister(node);
        assertFalse(reg.isRegistered(node), "deregistered");
        assertEq(reg.nodeCount(), 0, "count after");
        vm.prank(op);
        reg.register(node, "p", "e", "b", _price()); // can come back
    }

    function test_register_reverts() public {
        vm.expectRevert(NodeRegistry.ZeroAddress.selector);
        reg.register(address(0), "p", "e", "b", _price());
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.EmptyField.selector, "peerId"));
        reg.register(node, "", "e", "b", _price());
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.EmptyField.selector, "endpoint"));
        reg.register(node, "p", "", "b", _price());
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.EmptyField.selector, "baseModel"));
        reg.register(node, "p", "e", "", _price());
        reg.register(node, "p", "e", "b", _price());
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.AlreadyRegistered.selector, node));
        reg.register(node, "p", "e", "b", _price());
    }

    function test_operatorOnly() public {
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.UnknownNode.selector, node));
        reg.deregister(node);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.UnknownNode.selector, node));
        reg.getNode(node);
        vm.prank(op);
        reg.register(node, "p", "e", "b", _price());
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NotOperator.selector, node, address(this)));
        reg.deregister(node);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NotOperator.selector, node, address(this)));
        reg.update(node, "e", _price());
        vm.prank(op);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.EmptyField.selector, "endpoint"));
        reg.update(node, "", _price());
    }
}

contract OpenLoRATokenTest is Test {
    OpenLoRAToken token;

    function setUp() public {
        token = new OpenLoRAToken(address(this));
    }

    function test_mintOwnerOnly() public {
        token.mint(address(0xA), 5);
        assertEq(token.balanceOf(address(0xA)), 5, "minted");
        vm.prank(address(0xA));
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, address(0xA)));
        token.mint(address(0xA), 5);
    }

    function test_permit() public {
        uint256 pk = 0xA11CE;
        address owner = vm.addr(pk);
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"),
                owner,
                address(0xBEEF),
                77,
                0,
                block.timestamp + 1
            )
        );
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", token.DOMAIN_SEPARATOR(), structHash));
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, digest);
        token.permit(owner, address(0xBEEF), 77, block.timestamp + 1, v, r, s);
        assertEq(token.allowance(owner, address(0xBEEF)), 77, "allowance");
        assertEq(token.decimals(), 18, "decimals");
    }
}

contract AdapterLineageTest is Test {
    DatanetRegistry datanets;
    AdapterRegistry reg;
    address author = address(0xAA);

    function setUp() public {
        datanets = new DatanetRegistry();
        reg = new AdapterRegistry(datanets);
        datanets.createDatanet("m1");
        datanets.createDatanet("m2");
        datanets.createDatanet("m3"); // never publishes a version
        for (uint256 d = 1; d <= 2; ++d) {
            datanets.contribute(d, "bafydata", 10);
            datanets.accept(d, 1);
        }
        uint256[] memory one = new uint256[](1);
        one[0] = 1;
        uint256[] memory w = new uint256[](1);
        w[0] = 10;
        datanets.publishVersion(1, 1, "bafyv1", 10, one, w);
        datanets.publishVersion(1, 2, "bafyv2", 10, one, w);
        datanets.publishVersion(2, 1, "bafyv1b", 10, one, w);
    }

    function _ids(uint256 a, uint256 b) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](2);
        ids[0] = a;
        ids[1] = b;
    }

    function _w(uint16 a, uint16 b) internal pure returns (uint16[] memory w) {
        w = new uint16[](2);
        w[0] = a;
        w[1] = b;
    }

    function _lineage(uint256 v1, uint256 v2) internal pure returns (AdapterRegistry.Lineage memory) {
        return AdapterRegistry.Lineage({datanetVersions: _ids(v1, v2), manifestCid: "bafymanifest",
            baseWeightsCid: "bafybase"});
    }

    function test_registerWithLineage() public {
        bytes32 id = keccak256("bafyadapter");
        vm.expectEmit();
        emit AdapterRegistry.AdapterRegistered(id, author, "bafyadapter", "smollm2", 7, _ids(1, 2), _w(6000, 4000));
        vm.expectEmit();
        emit AdapterRegistry.AdapterLineage(id, _ids(1, 2), _ids(2, 1), "bafymanifest", "bafybase");
        vm.prank(author);
        assertEq(reg.registerWithLineage("bafyadapter", "smollm2", 7, _ids(1, 2), _w(6000, 4000), _lineage(2, 1)),
            id, "id = keccak(cid)");
        AdapterRegistry.Adapter memory a = reg.getAdapter(id);
        assertEq(a.author, author, "author");
        assertEq(a.pricePerToken, 7, "price");
        assertEq(a.baseModel, "smollm2", "base");
        assertEq(a.weightsBps[1], 4000, "weight");
        assertEq(a.datanetVersions.length, 2, "versions");
        assertEq(a.datanetVersions[0], 2, "version of datanet 1");
        assertEq(a.datanetVersions[1], 1, "version of datanet 2");
        assertEq(a.manifestCid, "bafymanifest", "manifest");
        assertEq(a.baseWeightsCid, "bafybase", "base weights");
        assertTrue(reg.hasLineage(id) && reg.isActive(id), "lineage, active");
        assertEq(reg.adapterCount(), 1, "count");
    }

    function test_registerWithoutLineage_hasEmptyLineage() public {
        vm.prank(author);
        bytes32 id = reg.register("bafyouter", "smollm2", 1, _ids(1, 2), _w(5000, 5000));
        AdapterRegistry.Adapter memory a = reg.getAdapter(id);
        assertEq(a.datanetVersions.length, 0, "no versions");
        assertEq(a.manifestCid, "", "no manifest");
        assertEq(a.baseWeightsCid, "", "no base cid");
        assertFalse(reg.hasLineage(id), "no lineage");
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownAdapter.selector, bytes32(0)));
        reg.hasLineage(bytes32(0));
    }

    function test_registerWithLineage_reverts() public {
        uint256[] memory ids = _ids(1, 2);
        uint16[] memory w = _w(5000, 5000);
        AdapterRegistry.Lineage memory l = _lineage(1, 1);
        l.datanetVersions = new uint256[](1);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.VersionsLengthMismatch.selector, 2, 1));
        reg.registerWithLineage("c", "b", 1, ids, w, l);
        l = _lineage(1, 1);
        l.manifestCid = "";
        vm.expectRevert(AdapterRegistry.EmptyManifestCid.selector);
        reg.registerWithLineage("c", "b", 1, ids, w, l);
        l = _lineage(1, 1);
        l.baseWeightsCid = "";
        vm.expectRevert(AdapterRegistry.EmptyBaseWeightsCid.selector);
        reg.registerWithLineage("c", "b", 1, ids, w, l);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownDatanetVersion.selector, 1, 3));
        reg.registerWithLineage("c", "b", 1, ids, w, _lineage(3, 1));
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownDatanetVersion.selector, 2, 0));
        reg.registerWithLineage("c", "b", 1, ids, w, _lineage(1, 0));
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownDatanetVersion.selector, 3, 1));
        reg.registerWithLineage("c", "b", 1, _ids(1, 3), w, _lineage(1, 1)); // Datanet 3 has no version
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownDatanet.selector, 4));
        reg.registerWithLineage("c", "b", 1, _ids(1, 4), w, _lineage(1, 1));
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.WeightsDoNotSum.selector, 9999));
        reg.registerWithLineage("c", "b", 1, ids, _w(5000, 4999), _lineage(1, 1));
        vm.expectRevert(AdapterRegistry.EmptyCid.selector);
        reg.registerWithLineage("", "b", 1, ids, w, _lineage(1, 1));
        assertEq(reg.adapterCount(), 0, "nothing registered");
        bytes32 id = reg.registerWithLineage("c", "b", 1, ids, w, _lineage(1, 1));
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.AlreadyRegistered.selector, id));
        reg.registerWithLineage("c", "b", 1, ids, w, _lineage(2, 1));
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.AlreadyRegistered.selector, id));
        reg.register("c", "b", 1, ids, w);
    }

    function testFuzz_registerWithLineage_versionInRange(uint256 v) public {
        uint256[] memory one = new uint256[](1);
        one[0] = 1;
        uint16[] memory full = new uint16[](1);
        full[0] = 10_000;
        uint256[] memory vs = new uint256[](1);
        vs[0] = v;
        AdapterRegistry.Lineage memory l =
            AdapterRegistry.Lineage({datanetVersions: vs, manifestCid: "m", baseWeightsCid: "b"});
        if (v == 0 || v > 2) {
            vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownDatanetVersion.selector, 1, v));
        }
        reg.registerWithLineage("c", "b", 1, one, full, l);
    }
}
